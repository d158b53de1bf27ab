// The video stage: the stylized output large, the camera a small inset the user can drag
// (or side by side), fullscreen and picture-in-picture for the output.

const LAYOUT_KEY = "livestyle-layout";

export function setupStage({ stage, inset, output, remote, layoutToggle, fullscreen, pip }) {
  const applyLayout = (layout) => {
    stage.dataset.layout = layout;
    layoutToggle.setAttribute("aria-pressed", String(layout === "side"));
    inset.style.left = inset.style.top = inset.style.right = inset.style.bottom = "";
    localStorage.setItem(LAYOUT_KEY, layout);
  };
  applyLayout(localStorage.getItem(LAYOUT_KEY) === "side" ? "side" : "inset");
  layoutToggle.addEventListener("click", () => applyLayout(stage.dataset.layout === "side" ? "inset" : "side"));
  dragWithin(inset, output, () => stage.dataset.layout === "inset");

  fullscreen.hidden = !document.fullscreenEnabled;
  fullscreen.addEventListener("click", () => {
    if (document.fullscreenElement) document.exitFullscreen();
    else output.requestFullscreen().catch(() => {});
  });
  document.addEventListener("fullscreenchange", () => {
    fullscreen.textContent = document.fullscreenElement ? "Exit fullscreen" : "Fullscreen";
  });

  pip.hidden = !document.pictureInPictureEnabled;
  pip.addEventListener("click", () => {
    if (document.pictureInPictureElement) document.exitPictureInPicture();
    else remote.requestPictureInPicture().catch(() => {});
  });
}

/** Pointer-drag `box` inside `area` (mouse, touch and pen alike), while allowed(). */
function dragWithin(box, area, allowed) {
  let start = null;
  box.addEventListener("pointerdown", (e) => {
    if (!allowed()) return;
    const b = box.getBoundingClientRect();
    start = { x: e.clientX - b.left, y: e.clientY - b.top };
    box.setPointerCapture(e.pointerId);
    box.classList.add("dragging");
  });
  box.addEventListener("pointermove", (e) => {
    if (!start) return;
    const a = area.getBoundingClientRect();
    const b = box.getBoundingClientRect();
    const x = Math.min(Math.max(e.clientX - a.left - start.x, 0), a.width - b.width);
    const y = Math.min(Math.max(e.clientY - a.top - start.y, 0), a.height - b.height);
    Object.assign(box.style, { left: `${x}px`, top: `${y}px`, right: "auto", bottom: "auto" });
  });
  const end = () => {
    start = null;
    box.classList.remove("dragging");
  };
  box.addEventListener("pointerup", end);
  box.addEventListener("pointercancel", end);
}
