// Compiles contracts/*.sol with the pinned solc-js into contracts/build/<Name>.json.
// `--check` compiles into memory and exits 1 when a committed artifact differs (CI runs it).
// EVM target "london": GoQuorum (geth 1.10/1.11 base) has no PUSH0 (Shanghai).
import { readFileSync, readdirSync, writeFileSync, existsSync } from "node:fs";
import { join, basename, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import solc from "solc";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const sourcesDir = join(root, "contracts");
const buildDir = join(root, "contracts", "build");
const check = process.argv.includes("--check");

const sources = {};
for (const file of readdirSync(sourcesDir).filter((f) => f.endsWith(".sol")).sort()) {
  sources[file] = { content: readFileSync(join(sourcesDir, file), "utf8") };
}
const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion: "london",
    optimizer: { enabled: true, runs: 200 },
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};
const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors || []).filter((e) => e.severity === "error");
if (errors.length) {
  for (const e of errors) console.error(e.formattedMessage);
  process.exit(1);
}
let stale = 0;
for (const [file, contracts] of Object.entries(output.contracts)) {
  for (const [name, c] of Object.entries(contracts)) {
    const artifact = {
      contractName: name,
      sourceName: `contracts/${basename(file)}`,
      compiler: `solc-js ${solc.version()}`,
      evmVersion: input.settings.evmVersion,
      abi: c.abi,
      bytecode: "0x" + c.evm.bytecode.object,
      deployedBytecode: "0x" + c.evm.deployedBytecode.object,
    };
    const text = JSON.stringify(artifact, null, 2) + "\n";
    const path = join(buildDir, `${name}.json`);
    if (check) {
      if (!existsSync(path) || readFileSync(path, "utf8") !== text) {
        console.error(`stale artifact: ${path} (run: node scripts/compile-contracts.mjs)`);
        stale += 1;
      }
    } else {
      writeFileSync(path, text);
      console.error(`wrote ${path}`);
    }
  }
}
process.exit(stale ? 1 : 0);
