// An ethers v6 user's script over the proxy's WebSocket: WebSocketProvider (API key in the URL),
// getSigner(address).sendTransaction, provider.on("block"), a contract deployed and its event
// listened to with contract.on. Prints one JSON line for the Python test to check on chain.
import { readFileSync } from "node:fs";
import { ContractFactory, WebSocketProvider } from "ethers";

const { PROXY_WS_URL, ACCOUNT, ARTIFACT } = process.env;
const provider = new WebSocketProvider(PROXY_WS_URL);

const network = await provider.getNetwork();
const signer = await provider.getSigner(ACCOUNT);

const blocks = [];
const threeBlocks = new Promise((resolve) => {
  provider.on("block", (number) => {
    blocks.push(number);
    if (blocks.length === 3) resolve();
  });
});

const sent = await signer.sendTransaction({ to: ACCOUNT, value: 7n });
await sent.wait();

const artifact = JSON.parse(readFileSync(ARTIFACT, "utf8"));
const factory = new ContractFactory(artifact.abi, artifact.bytecode, signer);
const counter = await factory.deploy();
await counter.waitForDeployment();

const events = [];
let heard;
const firstEvent = new Promise((resolve) => { heard = resolve; });
await counter.on("Incremented", (by, count, payload) => {
  events.push({ by, count: count.toString(), tx: payload.log.transactionHash });
  heard();
});
// contract.on subscribes in the background: increment until the subscription hears one (each
// increment is checked by the test, so none can be a false positive).
const increments = [];
for (let attempt = 0; attempt < 10 && events.length === 0; attempt++) {
  const increment = await counter.increment(4n);
  increments.push(increment.hash);
  await increment.wait();
  await Promise.race([firstEvent, new Promise((resolve) => setTimeout(resolve, 1500))]);
}
await threeBlocks;
const counterAddress = await counter.getAddress();
await provider.destroy();

console.log(JSON.stringify({
  chainId: network.chainId.toString(),
  sent: sent.hash,
  blocks,
  increments,
  events,
  counter: counterAddress,
}));
