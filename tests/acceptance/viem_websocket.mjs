// A viem user's script over the proxy's WebSocket: the webSocket transport (API key in the URL),
// a JSON-RPC account (the proxy signs), watchBlockNumber and watchContractEvent (eth_subscribe
// under the hood), a contract deployed and called. Prints one JSON line for the Python test.
import { readFileSync } from "node:fs";
import { createPublicClient, createWalletClient, webSocket } from "viem";

const { PROXY_WS_URL, ACCOUNT, ARTIFACT } = process.env;
const transport = webSocket(PROXY_WS_URL);
const client = createPublicClient({ transport });
const wallet = createWalletClient({ account: ACCOUNT, transport });
const artifact = JSON.parse(readFileSync(ARTIFACT, "utf8"));

const chainId = await client.getChainId();
const blocks = [];
let threeBlocks;
const blocksSeen = new Promise((resolve) => { threeBlocks = resolve; });
const unwatchBlocks = client.watchBlockNumber({
  poll: false,
  onBlockNumber: (number) => {
    blocks.push(Number(number));
    if (blocks.length === 3) threeBlocks();
  },
});

const sent = await wallet.sendTransaction({ to: ACCOUNT, value: 7n, chain: null });
await client.waitForTransactionReceipt({ hash: sent });

const deployed = await wallet.deployContract({
  abi: artifact.abi, bytecode: artifact.bytecode, chain: null,
});
const { contractAddress } = await client.waitForTransactionReceipt({ hash: deployed });

const events = [];
let heard;
const firstEvent = new Promise((resolve) => { heard = resolve; });
const unwatchEvents = client.watchContractEvent({
  address: contractAddress, abi: artifact.abi, eventName: "Incremented", poll: false,
  onLogs: (logs) => {
    for (const log of logs) {
      events.push({ by: log.args.by, count: log.args.count.toString(), tx: log.transactionHash });
    }
    heard();
  },
});
// The subscription starts in the background: increment until it hears one (every increment is
// checked on chain by the test, so none can be a false positive).
const increments = [];
for (let attempt = 0; attempt < 10 && events.length === 0; attempt++) {
  const hash = await wallet.writeContract({
    address: contractAddress, abi: artifact.abi, functionName: "increment", args: [4n],
    chain: null,
  });
  increments.push(hash);
  await client.waitForTransactionReceipt({ hash });
  await Promise.race([firstEvent, new Promise((resolve) => setTimeout(resolve, 1500))]);
}
await blocksSeen;
unwatchBlocks();
unwatchEvents();
const socket = await transport({}).value.getRpcClient();
socket.close();

console.log(JSON.stringify({ chainId: String(chainId), sent, blocks, increments, events }));
