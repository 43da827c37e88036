// Live transaction events: one WebSocket to the proxy's own origin, authenticated at the upgrade
// with the subprotocol list (browsers cannot set headers on a WebSocket), never with the key in
// the URL; then eth_subscribe("qsigner_transactions"). Reconnects while signed in.
import { session } from "./api.js";

const listeners = new Set();
let socket = null;
let wanted = false;
let retry = 1000;
let onStatus = () => {};

export function onEvent(listener) { listeners.add(listener); }
export function onLiveStatus(callback) { onStatus = callback; }

export function connect() {
  wanted = true;
  if (socket) return;
  const credential = session.credential;
  if (!credential) return;
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const ws = new WebSocket(`${scheme}//${location.host}/`, ["qsigner", `bearer.${credential}`]);
  socket = ws;
  ws.addEventListener("open", () => {
    ws.send(JSON.stringify({ jsonrpc: "2.0", id: 1, method: "eth_subscribe", params: ["qsigner_transactions"] }));
  });
  ws.addEventListener("message", (message) => {
    let data;
    try { data = JSON.parse(message.data); } catch { return; }
    if (data.id === 1 && data.result) { retry = 1000; onStatus(true); }
    if (data.method === "eth_subscription" && data.params && data.params.result) {
      for (const listener of listeners) listener(data.params.result);
    }
  });
  ws.addEventListener("close", () => {
    if (socket === ws) socket = null;
    onStatus(false);
    if (wanted) { setTimeout(connect, retry); retry = Math.min(retry * 2, 30000); }
  });
}

export function disconnect() {
  wanted = false;
  if (socket) { const ws = socket; socket = null; ws.close(); }
  onStatus(false);
}
