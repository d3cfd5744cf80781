// Comparison peer: the reference y-websocket backend, @y/websocket-server 0.1.1,
// for the bench harness.
//
//   node bench/peers/y-websocket-server.mjs  # PORT defaults to 23456
//   PORT=30002 node bench/peers/y-websocket-server.mjs
//
// * Binds 127.0.0.1 only. Equivalent to the package's own bin (src/server.js)
//   but with the `ws` 8 WebSocketServer instead of the ws 6 that bin imports.
// * Document name = URL path without the leading "/" and without the query
//   string: ws://127.0.0.1:23456/d1?x=y -> document "d1". Messages carry no
//   document name (one document per socket).
// * In-memory: YPERSISTENCE (LevelDB persistence) and CALLBACK_URL (HTTP
//   callback) are removed from the environment BEFORE the library is loaded,
//   because utils.js reads them at import time. Without persistence the server
//   never unloads a document: it stays in memory, content intact, after its
//   last client leaves, until the process exits.
// * Other defaults kept: GC on (unless GC=false/0), ws-level ping every 30 s
//   per connection (a socket that has not ponged by the next tick is closed),
//   ws maxPayload 100 MiB, no permessage-deflate.
// * Quiet: stdout carries exactly one line once listening:
//     peer: listening on ws://127.0.0.1:PORT
// * SIGTERM / SIGINT: closes all sockets, stops listening, exits 0.

import http from "node:http";
import { WebSocketServer } from "ws";

delete process.env.YPERSISTENCE;
delete process.env.CALLBACK_URL;
const { setupWSConnection } = await import("@y/websocket-server/utils");

const HOST = "127.0.0.1";
const port = Number.parseInt(process.env.PORT ?? "23456", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
	console.error(`peer: invalid PORT ${JSON.stringify(process.env.PORT)}`);
	process.exit(2);
}

const wss = new WebSocketServer({ noServer: true });
wss.on("connection", setupWSConnection);

const server = http.createServer((_req, res) => {
	res.writeHead(200, { "Content-Type": "text/plain" });
	res.end("okay");
});
server.on("upgrade", (req, socket, head) => {
	wss.handleUpgrade(req, socket, head, (ws) => wss.emit("connection", ws, req));
});
server.on("error", (err) => {
	console.error(`peer: cannot listen on ${HOST}:${port}: ${err.message}`);
	process.exit(1);
});

let stopping = false;
const stop = () => {
	if (stopping) return;
	stopping = true;
	setTimeout(() => process.exit(0), 2000).unref();
	for (const ws of wss.clients) ws.terminate();
	wss.close();
	server.close(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

server.listen(port, HOST, () => {
	process.stdout.write(`peer: listening on ws://${HOST}:${server.address().port}\n`);
});
