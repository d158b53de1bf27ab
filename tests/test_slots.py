import asyncio

import pytest

from pipeline.slots import Inbox, LatestSlot, SlotClosed

pytestmark = pytest.mark.unit


async def test_latest_slot_overwrites_and_counts_drops():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.drops == 2
    assert await slot.get() == 3
    assert slot.put(4) is False  # the slot was empty again
    assert await slot.get() == 4


async def test_latest_slot_get_waits_for_a_value():
    slot: LatestSlot[str] = LatestSlot()
    waiter = asyncio.create_task(slot.get())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    slot.put("frame")
    assert await asyncio.wait_for(waiter, 1) == "frame"


async def test_latest_slot_close_wakes_waiters_with_reason():
    slot: LatestSlot[int] = LatestSlot()
    waiter = asyncio.create_task(slot.get())
    await asyncio.sleep(0.01)
    slot.close(RuntimeError("engine died"))
    with pytest.raises(SlotClosed) as info:
        await asyncio.wait_for(waiter, 1)
    assert isinstance(info.value.__cause__, RuntimeError)
    assert slot.put(5) is False  # puts after close are ignored
    with pytest.raises(SlotClosed):
        await slot.get()


async def test_latest_slot_delivers_last_value_before_reporting_closed():
    slot: LatestSlot[int] = LatestSlot()
    slot.put(9)
    slot.close()
    assert await slot.get() == 9
    with pytest.raises(SlotClosed):
        await slot.get()


async def test_inbox_is_fifo_and_bounded():
    inbox: Inbox[int] = Inbox(maxlen=3)
    for i in range(5):
        inbox.put(i)
    assert [await inbox.get() for _ in range(3)] == [2, 3, 4]
    waiter = asyncio.create_task(inbox.get())
    await asyncio.sleep(0.01)
    inbox.close()
    with pytest.raises(SlotClosed):
        await asyncio.wait_for(waiter, 1)
