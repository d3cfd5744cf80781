// Comparison peer for chat: a Socket.IO 4.8 chat server, what teams run today for chat and presence,
// for the bench harness's chat-fanout scenario.
//
//   node bench/peers/socketio.mjs         # PORT defaults to 23457
//
// * Binds 127.0.0.1 only; WebSocket transport only (no long-polling upgrade dance), default path
//   /socket.io/, default namespace "/".
// * The usual chat server shape: `join` (room, ack) puts the socket in a Socket.IO room and acks;
//   `send` ({room, id, text}, ack) numbers the message per room, broadcasts
//   `event` {room, seq, id, text} to everyone in the room (sender included, like Tandem) and acks
//   {seq}. `typing` and `presence` ({room, …}) are relayed to the rest of the room as received, with
//   the user from the handshake query (?user=). No persistence and no Redis adapter: messages live only in flight (the cheapest way Socket.IO
//   can be run; the Redis adapter would add a pub/sub hop per broadcast).
// * Quiet: stdout carries exactly one line once listening:
//     peer: listening on ws://127.0.0.1:PORT
// * SIGTERM / SIGINT: closes all sockets, stops listening, exits 0.

import http from "node:http";
import { Server } from "socket.io";

const HOST = "127.0.0.1";
const port = Number.parseInt(process.env.PORT ?? "23457", 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
	console.error(`peer: invalid PORT ${JSON.stringify(process.env.PORT)}`);
	process.exit(2);
}

const server = http.createServer((_req, res) => {
	res.writeHead(200, { "Content-Type": "text/plain" });
	res.end("okay");
});
const io = new Server(server, { transports: ["websocket"], serveClient: false });
const seqs = new Map();

io.on("connection", (socket) => {
	const user = String(socket.handshake.query.user ?? socket.id);
	socket.on("join", (room, ack) => {
		if (typeof room !== "string") return;
		socket.join(room);
		if (typeof ack === "function") ack({ ok: true });
	});
	socket.on("send", (msg, ack) => {
		if (!msg || typeof msg.room !== "string" || typeof msg.text !== "string") return;
		const seq = (seqs.get(msg.room) ?? 0) + 1;
		seqs.set(msg.room, seq);
		io.to(msg.room).emit("event", { room: msg.room, seq, id: msg.id, text: msg.text });
		if (typeof ack === "function") ack({ seq });
	});
	// Typing indicators and presence (cursor) updates: relayed to the rest of the room as received.
	socket.on("typing", (msg) => {
		if (!msg || typeof msg.room !== "string") return;
		socket.to(msg.room).emit("typing", { user, typing: msg.typing === true });
	});
	socket.on("presence", (msg) => {
		if (!msg || typeof msg.room !== "string") return;
		socket.to(msg.room).emit("presence", { user, state: msg.state });
	});
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
	io.close();
	server.close(() => process.exit(0));
};
process.on("SIGTERM", stop);
process.on("SIGINT", stop);

server.listen(port, HOST, () => {
	process.stdout.write(`peer: listening on ws://${HOST}:${server.address().port}\n`);
});
