// Comparison peer: a stock @hocuspocus/server 4.7.0 for the bench harness.
//
//   node bench/peers/hocuspocus.mjs          # PORT defaults to 23457
//   PORT=30001 node bench/peers/hocuspocus.mjs
//
// * Binds 127.0.0.1 only.
// * In-memory: NO persistence extension (no @hocuspocus/extension-database,
//   -sqlite, -redis, ...) and no hooks. A document lives only while at least
//   one client is connected to it; when its last connection closes the
//   server unloads it and its content is gone.
// * No onAuthenticate hook, so any token (including "") is accepted -- but a
//   client must still send one Auth message per document before the server
//   handles anything else for that document (see HOCUSPOCUS-PROTOCOL.md).
// * Every other setting is the library default (timeout 60 s, flushDelay 0,
//   debounce 2 s, maxPayload 100 MiB, ...), except that HOCUSPOCUS_TIMEOUT_MS,
//   if set, overrides the idle-connection `timeout` (default 60000 ms: a socket
//   that sends no application message for that long is closed with 4408).
// * Quiet: no start screen; stdout carries exactly one line once listening:
//     peer: listening on ws://127.0.0.1:PORT
//   Errors the library itself logs go to stderr.
// * SIGTERM / SIGINT: closes all connections, stops listening, exits 0.

import { Server } from "@hocuspocus/server";

const HOST = "127.0.0.1";
const port = Number.parseInt(process.env.PORT ?? "23457", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
	console.error(`peer: invalid PORT ${JSON.stringify(process.env.PORT)}`);
	process.exit(2);
}

const config = {
	address: HOST,
	port,
	quiet: true,
	// We install our own handlers below (the built-in ones also grab SIGQUIT
	// and can hang on shutdown).
	stopOnSignals: false,
	extensions: [],
};
if (process.env.HOCUSPOCUS_TIMEOUT_MS) {
	config.timeout = Number.parseInt(process.env.HOCUSPOCUS_TIMEOUT_MS, 10);
}

const server = new Server(config);

let stopping = false;
const stop = (signal) => {
	if (stopping) return;
	stopping = true;
	// Never hang the harness: force the exit if destroy() does not settle.
	setTimeout(() => process.exit(0), 2000).unref();
	server
		.destroy()
		.catch((err) => console.error(`peer: error during ${signal} shutdown`, err))
		.finally(() => process.exit(0));
};
process.on("SIGTERM", () => stop("SIGTERM"));
process.on("SIGINT", () => stop("SIGINT"));

server.httpServer.on("error", (err) => {
	console.error(`peer: cannot listen on ${HOST}:${port}: ${err.message}`);
	process.exit(1);
});

await server.listen();
process.stdout.write(`peer: listening on ws://${HOST}:${server.address.port}\n`);
