// An ethers v6 user's script against the proxy: JsonRpcProvider with a FetchRequest carrying
// the auth headers, provider.getSigner(address).sendTransaction, ContractFactory.deploy, a call.
// Prints one JSON line with the hashes it produced, for the Python test to check on chain.
import { readFileSync } from "node:fs";
import { ContractFactory, FetchRequest, JsonRpcProvider } from "ethers";

const { PROXY_URL, PROXY_JWT, PROXY_PASSWORD, ACCOUNT, ARTIFACT } = process.env;
const request = new FetchRequest(PROXY_URL);
request.setHeader("Authorization", `Bearer ${PROXY_JWT}`);
request.setHeader("X-Signer-Password", PROXY_PASSWORD);
const provider = new JsonRpcProvider(request, undefined, { staticNetwork: true });

const network = await provider.getNetwork();
const accounts = await provider.send("eth_accounts", []);
const signer = await provider.getSigner(ACCOUNT);
const sent = await signer.sendTransaction({ to: ACCOUNT, value: 7n });
await sent.wait();

const artifact = JSON.parse(readFileSync(ARTIFACT, "utf8"));
const factory = new ContractFactory(artifact.abi, artifact.bytecode, signer);
const counter = await factory.deploy();
await counter.waitForDeployment();
const increment = await counter.increment(3n);
await increment.wait();
const count = await counter.count();
const signature = await signer.signMessage("hello from ethers");

console.log(JSON.stringify({
  chainId: network.chainId.toString(),
  accounts,
  hashes: [sent.hash, counter.deploymentTransaction().hash, increment.hash],
  count: count.toString(),
  signature,
}));
