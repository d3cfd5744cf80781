// Helpers for the @tandem/client tests: a real `tandem dev` with JWT auth, tokens, clients.

import WebSocket from 'ws'
import { startServer, mintToken } from '../../test/server.mjs'
import { TandemClient } from '../dist/index.js'

export const SECRET = 'client-tests-secret-0123456789'

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

export async function waitFor (predicate, timeoutMs = 10_000, message = 'condition') {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const v = await predicate()
    if (v) return v
    if (Date.now() >= deadline) throw new Error(`timed out waiting for ${typeof message === 'function' ? message() : message}`)
    await sleep(20)
  }
}

/** `tandem dev` with HS256 auth (plus extra flags). */
export function startAuthServer (args = [], opts = {}) {
  return startServer({ args: ['--jwt-hs256-secret', SECRET, ...args], ...opts })
}

/** A token for `sub` with room grants (PATTERN=ACCESS) and document grants. */
export function token (sub, rooms = ['*=write'], docs = ['*=write']) {
  const extra = rooms.flatMap((g) => ['--room-grant', g])
  return mintToken({ secret: SECRET, sub, grants: docs, extra })
}

/** A connected client (every test closes what it opens). */
export async function client (server, tok, opts = {}) {
  const c = new TandemClient({ url: server.url + '/v1', token: tok, WebSocket, minReconnectMs: 50, maxReconnectMs: 500, ...opts })
  await c.ready()
  return c
}

/**
 * A raw /v1 socket: send(obj), sendRaw(data), next(pred) → the next JSON frame matching pred,
 * frames (every JSON frame so far), closed → {code, reason}.
 */
export function raw (server, tok) {
  const url = server.url + '/v1' + (tok ? '?token=' + encodeURIComponent(tok) : '')
  const ws = new WebSocket(url)
  const frames = []
  const waiters = []
  let closeInfo = null
  const closed = new Promise((resolve) => ws.on('close', (code, reason) => {
    closeInfo = { code, reason: reason.toString() }
    resolve(closeInfo)
  }))
  ws.on('message', (data, isBinary) => {
    if (isBinary) return
    const m = JSON.parse(data.toString())
    const w = waiters.find((w) => w.pred(m))
    if (w) {
      // Consumed by the waiter; not kept for later next() calls.
      waiters.splice(waiters.indexOf(w), 1)
      w.resolve(m)
    } else {
      frames.push(m)
    }
  })
  const opened = new Promise((resolve, reject) => {
    ws.once('open', resolve)
    ws.once('unexpected-response', (_req, res) => reject(new Error('HTTP ' + res.statusCode)))
    ws.once('error', reject)
  })
  return {
    ws,
    frames,
    closed,
    get closeInfo () { return closeInfo },
    opened,
    send: (o) => ws.send(JSON.stringify(o)),
    sendRaw: (d, opts) => ws.send(d, opts),
    next (pred, timeoutMs = 10_000) {
      const have = frames.find(pred)
      if (have) {
        frames.splice(frames.indexOf(have), 1)
        return Promise.resolve(have)
      }
      return new Promise((resolve, reject) => {
        const w = { pred, resolve }
        waiters.push(w)
        setTimeout(() => {
          if (waiters.includes(w)) {
            waiters.splice(waiters.indexOf(w), 1)
            reject(new Error('no matching frame in time; unclaimed: ' + JSON.stringify(frames).slice(0, 2000)))
          }
        }, timeoutMs)
      })
    },
    reply (id, timeoutMs) { return this.next((m) => m.id === id, timeoutMs) },
    close: () => ws.close()
  }
}

/** Collects a room's chat messages (text by seq) and every event. */
export function collect (room) {
  const events = []
  room.on('event', (e) => events.push(e))
  return {
    events,
    texts: () => events.filter((e) => e.type === 'chat.message.sent').map((e) => e.payload.text),
    seqs: () => events.map((e) => e.seq)
  }
}
