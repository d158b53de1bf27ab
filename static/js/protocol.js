// Data channel protocol shared with the server: JSON text messages that all
// carry the protocol version "v" and a "type".

export const PROTOCOL_VERSION = 1;
export const CHANNEL_LABEL = "control";

export const setPromptMessage = (prompt, seq) =>
  JSON.stringify({ v: PROTOCOL_VERSION, type: "set_prompt", prompt, seq });

export const adapterStrengthMessage = (value, seq) =>
  JSON.stringify({ v: PROTOCOL_VERSION, type: "set_adapter_strength", value, seq });

/** renew: a new link; the current one ends (without it the server answers with the live one). */
export const createWatchMessage = ({ renew = false } = {}) =>
  JSON.stringify({ v: PROTOCOL_VERSION, type: "create_watch", ...(renew ? { renew: true } : {}) });

export const revokeWatchMessage = () => JSON.stringify({ v: PROTOCOL_VERSION, type: "revoke_watch" });

/** seed: a take to go back to; without it the server picks one (and says which). */
export const rerollMessage = (seq, seed = null) =>
  JSON.stringify({ v: PROTOCOL_VERSION, type: "reroll", seq, ...(seed === null ? {} : { seed }) });

export const pingMessage = (t) => JSON.stringify({ v: PROTOCOL_VERSION, type: "ping", t });

/** Returns the parsed server message, or null for anything this client can't understand. */
export function parseMessage(data) {
  if (typeof data !== "string") return null;
  let msg;
  try {
    msg = JSON.parse(data);
  } catch {
    return null;
  }
  if (msg?.v !== PROTOCOL_VERSION || typeof msg.type !== "string") return null;
  return msg;
}
