// An ethers v6 session over the proxy's WebSocket that lives through nodes' deaths: it listens
// to blocks and to a contract's event, says READY, and twice waits for the test to kill a node
// carrying its subscriptions (KILLED on stdin), sends more increments through the proxy and
// waits to hear them (then says AGAIN); it prints what it heard, for the test to check: every
// block once, every event once, no error.
import { createInterface } from "node:readline";
import { readFileSync } from "node:fs";
import { Contract, WebSocketProvider } from "ethers";

const { PROXY_WS_URL, ACCOUNT, ARTIFACT, COUNTER } = process.env;
const provider = new WebSocketProvider(PROXY_WS_URL);
const errors = [];
provider.on("error", (error) => errors.push(String(error)));
const signer = await provider.getSigner(ACCOUNT);
const artifact = JSON.parse(readFileSync(ARTIFACT, "utf8"));
const counter = new Contract(COUNTER, artifact.abi, signer);

const blocks = [];
await provider.on("block", (number) => blocks.push(number));
const events = [];
await counter.on("Incremented", (by, count, payload) => events.push(payload.log.transactionHash));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const until = async (condition, what) => {
  for (let waited = 0; !condition(); waited += 100) {
    if (waited > 60000) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
};
const increments = [];
const increment = async () => {
  const sent = await counter.increment(1n);
  increments.push(sent.hash);
  await sent.wait();
};

// Both subscriptions live: an increment heard, and blocks coming.
while (events.length === 0) {
  await increment();
  await sleep(1500);
}
await until(() => blocks.length >= 2, "blocks");
const heardFirst = increments.indexOf(events[0]);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
for (const said of ["READY", "AGAIN"]) {
  console.log(said);
  while ((await lines.next()).value !== "KILLED");
  for (let n = 0; n < 3; n++) await increment();
  await until(() => events.length >= increments.length - heardFirst, "the events");
}
const lastBlock = blocks[blocks.length - 1];
await until(() => blocks[blocks.length - 1] >= lastBlock + 2, "more blocks");
await provider.destroy();
console.log(JSON.stringify({ blocks, events, increments, heardFirst, errors }));
process.exit(0);
