// Sends one binary message of a given size with Node's `ws` client, on COUNT
// connections in turn, for tests/e2e/test_node_client.py.
//
// Usage: node big_message.js URL SIZE [COUNT]
//
// On each connection, waits for the echo (then closes with 1000 "done") or for
// the server to close the connection. Prints one JSON object on stdout:
// {"connections": [{"opened": bool,
//                   "echoed": null | {"binary": bool, "length": n, "intact": bool},
//                   "close": {"code": n, "reason": "..."}}, ...],
//  "errors": ["..."]}
'use strict';

const WebSocket = require('ws');

const TIMEOUT_MS = 20000;
const FILL = 0x61; // every byte is "a": easy to check the echo is intact

const url = process.argv[2];
const size = Number(process.argv[3]);
const count = Number(process.argv[4] || 1);
const report = { connections: [], errors: [] };

function finish(status) {
  process.stdout.write(JSON.stringify(report) + '\n', () => process.exit(status));
}

function once() {
  return new Promise((resolve) => {
    const result = { opened: false, echoed: null, close: null };
    const ws = new WebSocket(url);
    ws.on('open', () => {
      result.opened = true;
      ws.send(Buffer.alloc(size, FILL), { binary: true });
    });
    ws.on('message', (data, isBinary) => {
      const buffer = Buffer.from(data);
      result.echoed = {
        binary: isBinary,
        length: buffer.length,
        intact: buffer.every((byte) => byte === FILL),
      };
      ws.close(1000, 'done');
    });
    ws.on('error', (error) => report.errors.push(String(error)));
    ws.on('close', (code, reason) => {
      result.close = { code, reason: reason.toString('utf8') };
      resolve(result);
    });
  });
}

async function main() {
  // A deadlock guard: the test reads whatever happened so far.
  setTimeout(() => {
    report.errors.push(`timed out after ${TIMEOUT_MS} ms`);
    finish(2);
  }, TIMEOUT_MS).unref();
  for (let i = 0; i < count; i += 1) {
    report.connections.push(await once());
  }
  finish(0);
}

main().catch((error) => {
  report.errors.push(String(error));
  finish(1);
});
