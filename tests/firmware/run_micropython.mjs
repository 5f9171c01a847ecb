// Run Python code in the MicroPython WebAssembly interpreter under Node.
// Usage: node run_micropython.mjs SPEC.json, where SPEC is
//   {"module": "<path of micropython.mjs>", "files": {"<path inside>": "<path here>"}, "code": "..."}
// The files are copied into the interpreter's file system first; print() goes to stdout.
import { readFileSync } from "node:fs";
import { dirname } from "node:path";

const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));
const { loadMicroPython } = await import(spec.module);
const mp = await loadMicroPython({
  heapsize: 8 * 1024 * 1024,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
for (const [inside, here] of Object.entries(spec.files)) {
  mp.FS.mkdirTree(dirname(inside));
  mp.FS.writeFile(inside, readFileSync(here));
}
try {
  mp.runPython(spec.code);
} catch (err) {
  process.stderr.write(String(err) + "\n");
  process.exit(1);
}
