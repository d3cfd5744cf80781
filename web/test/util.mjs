// Shared helpers for the Tandem integration tests: polling, stock y-websocket
// providers, raw WebSocket clients, y-websocket message builders, hostile
// Yjs update builders and HS256 JWTs.

import { createHmac } from 'node:crypto'
import http from 'node:http'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'

export { WebSocket }

// every WebsocketProvider adds a process 'exit' listener; tests open dozens
process.setMaxListeners(Math.max(process.getMaxListeners(), 500))

// y-websocket message types
export const MSG_SYNC = 0
export const MSG_AWARENESS = 1
export const MSG_AUTH = 2
export const MSG_QUERY_AWARENESS = 3
// sync sub types
export const SYNC_STEP1 = 0
export const SYNC_STEP2 = 1
export const SYNC_UPDATE = 2

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * Poll `predicate` (sync or async) until it returns a truthy value; return that value.
 * Rejects after timeoutMs with `message` (or a default).
 */
export async function waitFor (predicate, timeoutMs = 10_000, { interval = 20, message } = {}) {
  const deadline = Date.now() + timeoutMs
  let lastErr
  for (;;) {
    try {
      const v = await predicate()
      if (v) return v
    } catch (e) {
      lastErr = e
    }
    if (Date.now() >= deadline) {
      const msg = (typeof message === 'function' ? message() : message) ?? `waitFor timed out after ${timeoutMs} ms`
      const err = new Error(msg + (lastErr ? ` (last error: ${lastErr.message})` : ''))
      throw err
    }
    await sleep(interval)
  }
}

/**
 * Stock y-websocket provider pointed at ws://HOST:PORT/doc/{docId}.
 * @param {string} url  ws://HOST:PORT (server.url)
 */
export function makeProvider (url, docId, doc = new Y.Doc(), opts = {}) {
  const { params, ...rest } = opts
  return new WebsocketProvider(url + '/doc', docId, doc, {
    WebSocketPolyfill: WebSocket,
    disableBc: true,
    connect: true,
    params: params ?? {},
    ...rest
  })
}

/** Wait until the provider received sync step 2 from the server. */
export async function waitSynced (provider, timeoutMs = 10_000) {
  await waitFor(() => provider.synced, timeoutMs, {
    message: `provider for ${provider.roomname} did not sync within ${timeoutMs} ms (wsconnected=${provider.wsconnected})`
  })
  return provider
}

/** New Y.Doc + provider, synced. Returns { doc, provider }. */
export async function connectedClient (url, docId, opts = {}) {
  const doc = new Y.Doc()
  if (opts.clientID !== undefined) doc.clientID = opts.clientID
  const { clientID, ...rest } = opts
  const provider = makeProvider(url, docId, doc, rest)
  await waitSynced(provider, opts.timeoutMs ?? 10_000)
  return { doc, provider }
}

/** Destroy providers and docs, ignoring errors. */
export function destroyAll (clients) {
  for (const c of clients) {
    try { c.provider?.destroy() } catch {}
    try { c.doc?.destroy() } catch {}
  }
  clients.length = 0
}

/** Map of clientID -> clock of a doc's state vector. */
export function stateVector (doc) {
  return Y.decodeStateVector(Y.encodeStateVector(doc))
}

/** JSON with object keys sorted, for order-insensitive comparisons. */
export function canonicalJson (value) {
  return JSON.stringify(value, (_k, v) => (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array))
    ? Object.fromEntries(Object.keys(v).sort().map((k) => [k, v[k]]))
    : v)
}

export function sameBytes (a, b) {
  return Buffer.from(a).equals(Buffer.from(b))
}

// ---------------------------------------------------------------------------
// y-websocket messages
// ---------------------------------------------------------------------------

export function syncStep1Message (docOrStateVector) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_SYNC)
  if (docOrStateVector instanceof Y.Doc) {
    syncProtocol.writeSyncStep1(e, docOrStateVector)
  } else {
    encoding.writeVarUint(e, SYNC_STEP1)
    encoding.writeVarUint8Array(e, docOrStateVector ?? new Uint8Array([0]))
  }
  return encoding.toUint8Array(e)
}

/** [0, 2, varbytes(update)] */
export function updateMessage (update) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_SYNC)
  syncProtocol.writeUpdate(e, update)
  return encoding.toUint8Array(e)
}

/** [1, varbytes(awarenessUpdate)] */
export function awarenessMessage (awarenessUpdate) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_AWARENESS)
  encoding.writeVarUint8Array(e, awarenessUpdate)
  return encoding.toUint8Array(e)
}

/** Awareness update for an arbitrary clientID / clock / state (null = removed). */
export function encodeAwarenessEntry (clientID, clock, state) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, 1)
  encoding.writeVarUint(e, clientID)
  encoding.writeVarUint(e, clock)
  encoding.writeVarString(e, JSON.stringify(state))
  return encoding.toUint8Array(e)
}

/** [3] */
export function queryAwarenessMessage () {
  return new Uint8Array([MSG_QUERY_AWARENESS])
}

/**
 * Decode one y-websocket message (best effort, for assertions).
 * @returns {{type:number, subtype?:number, payload?:Uint8Array, reason?:string, raw:Uint8Array}}
 */
export function decodeMessage (buf) {
  const raw = new Uint8Array(buf)
  const d = decoding.createDecoder(raw)
  const type = decoding.readVarUint(d)
  const out = { type, raw }
  try {
    if (type === MSG_SYNC) {
      out.subtype = decoding.readVarUint(d)
      out.payload = decoding.readVarUint8Array(d)
    } else if (type === MSG_AWARENESS) {
      out.payload = decoding.readVarUint8Array(d)
    } else if (type === MSG_AUTH) {
      out.subtype = decoding.readVarUint(d)
      out.reason = decoding.readVarString(d)
    }
  } catch (e) {
    out.decodeError = e.message
  }
  return out
}

/** Parse an awareness update into a Map clientID -> {clock, state}. */
export function parseAwarenessUpdate (update) {
  const d = decoding.createDecoder(update)
  const n = decoding.readVarUint(d)
  const m = new Map()
  for (let i = 0; i < n; i++) {
    const client = decoding.readVarUint(d)
    const clock = decoding.readVarUint(d)
    const state = JSON.parse(decoding.readVarString(d))
    m.set(client, { clock, state })
  }
  return m
}

// ---------------------------------------------------------------------------
// raw WebSocket clients
// ---------------------------------------------------------------------------

/**
 * Open a raw `ws` socket to ws://HOST:PORT/doc/{docId} (or `path`).
 * Returns { ws, opened: Promise<void>, closed: Promise<{code, reason, error}>,
 *           messages: Uint8Array[], send(frame), waitForMessage(pred, ms) }.
 * `opened` rejects with { status } when the upgrade is refused.
 */
export function openRaw (url, docId, { headers, protocols, path } = {}) {
  const target = path !== undefined ? url + path : `${url}/doc/${docId}`
  const ws = new WebSocket(target, protocols ?? [], { headers: headers ?? {} })
  ws.binaryType = 'nodebuffer'
  const messages = []
  let error = null
  let status = null
  const socketErrors = [] // TCP-level errors (EPIPE / ECONNRESET = the peer reset the connection)
  const opened = new Promise((resolve, reject) => {
    ws.once('open', () => {
      ws._socket?.on('error', (e) => socketErrors.push(e.code ?? e.message))
      resolve()
    })
    ws.once('unexpected-response', (_req, res) => {
      status = res.statusCode
      res.resume()
      const err = new Error(`upgrade refused with HTTP ${res.statusCode}`)
      err.status = res.statusCode
      reject(err)
      ws.terminate()
    })
    ws.once('close', () => reject(Object.assign(new Error('closed before open'), { status })))
  })
  opened.catch(() => {})
  const closed = new Promise((resolve) => {
    ws.on('close', (code, reason) => resolve({ code, reason: reason.toString(), error, status, socketErrors }))
  })
  ws.on('error', (e) => { error = e.message })
  ws.on('message', (data, isBinary) => {
    messages.push(isBinary ? new Uint8Array(data) : data.toString())
  })
  return {
    ws,
    opened,
    closed,
    messages,
    send (frame) {
      if (typeof frame === 'string') ws.send(frame, { binary: false })
      else ws.send(frame, { binary: true })
    },
    /** send one binary message as `pieces` WebSocket frames (first + continuation frames) */
    sendFragmented (buf, pieces) {
      const size = Math.ceil(buf.length / pieces)
      for (let off = 0; off < buf.length; off += size) {
        const end = Math.min(buf.length, off + size)
        ws.send(buf.subarray(off, end), { binary: true, fin: end === buf.length })
      }
    },
    async waitForMessage (pred, ms = 5000) {
      return waitFor(() => messages.find((m) => typeof m !== 'string' && pred(decodeMessage(m))), ms, {
        message: `no matching message within ${ms} ms (got ${messages.length} messages)`
      })
    },
    close () { try { ws.close() } catch {} },
    terminate () { try { ws.terminate() } catch {} }
  }
}

/**
 * Open a raw socket to the doc, send `frames` (Uint8Array => binary frame,
 * string => text frame) and resolve with {code, reason, messages} when the
 * server closes. If the server does not close within timeoutMs the socket is
 * terminated and code is null.
 */
export async function sendRaw (url, docId, frames, { timeoutMs = 10_000, headers, protocols } = {}) {
  const c = openRaw(url, docId, { headers, protocols })
  await c.opened
  for (const f of frames) c.send(f)
  let timer
  const timeout = new Promise((resolve) => {
    timer = setTimeout(() => resolve({ code: null, reason: `server did not close within ${timeoutMs} ms` }), timeoutMs)
  })
  const res = await Promise.race([c.closed, timeout])
  clearTimeout(timer)
  c.terminate()
  return { ...res, messages: c.messages }
}

/**
 * Attempt a WebSocket upgrade. Resolves with { opened: true, protocol } (and
 * closes the socket) or { opened: false, status } when refused.
 */
export async function tryUpgrade (url, docId, { headers, protocols, path } = {}) {
  const c = openRaw(url, docId, { headers, protocols, path })
  try {
    await Promise.race([c.opened, sleep(10_000).then(() => { throw new Error('upgrade timed out') })])
    const protocol = c.ws.protocol
    c.close()
    await Promise.race([c.closed, sleep(2000)])
    c.terminate()
    return { opened: true, protocol }
  } catch (e) {
    c.terminate()
    return { opened: false, status: e.status ?? null, error: e.message }
  }
}

/**
 * Plain HTTP request. Resolves { status, headers, body }.
 */
export function httpRequest (urlString, { method = 'GET', headers = {} } = {}) {
  return new Promise((resolve, reject) => {
    const req = http.request(urlString, { method, headers, timeout: 10_000 }, (res) => {
      let body = ''
      res.setEncoding('utf8')
      res.on('data', (d) => { body += d })
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }))
    })
    req.on('timeout', () => req.destroy(new Error('HTTP request timed out')))
    req.on('error', reject)
    req.end()
  })
}

// ---------------------------------------------------------------------------
// hostile / malformed Yjs updates (update v1 encoding)
// ---------------------------------------------------------------------------

/** Header of an update with one client block containing one struct. */
function oneStructHeader (e, client, clock = 0) {
  encoding.writeVarUint(e, 1) // number of clients
  encoding.writeVarUint(e, 1) // number of structs
  encoding.writeVarUint(e, client)
  encoding.writeVarUint(e, clock)
}

/**
 * One Item with ContentAny (info 0x08) under root type "a" holding an array
 * nested `depth` deep: 1 × any, then depth × [117 (array), 1 (len)], then 126 (null).
 */
export function nestedAnyUpdate (client, depth = 10_000) {
  const e = encoding.createEncoder()
  oneStructHeader(e, client)
  encoding.writeUint8(e, 0x08) // ContentAny, no origin, no right origin, no parentSub
  encoding.writeVarUint(e, 1) // parentInfo: parent is a root type given by name
  encoding.writeVarString(e, 'a')
  encoding.writeVarUint(e, 1) // one any value
  for (let i = 0; i < depth; i++) {
    encoding.writeUint8(e, 117) // array
    encoding.writeVarUint(e, 1) // of length 1
  }
  encoding.writeUint8(e, 126) // null
  encoding.writeVarUint(e, 0) // empty delete set
  return encoding.toUint8Array(e)
}

/** writeAny-encoded array nested `depth` deep ending in null. */
function writeDeepAnyArray (e, depth) {
  for (let i = 0; i < depth; i++) {
    encoding.writeUint8(e, 117)
    encoding.writeVarUint(e, 1)
  }
  encoding.writeUint8(e, 126)
}

/** ContentAny (info 0x08) holding objects nested `depth` deep: 118, len 1, key "k", ... */
export function nestedAnyObjectUpdate (client, depth = 10_000) {
  const e = encoding.createEncoder()
  oneStructHeader(e, client)
  encoding.writeUint8(e, 0x08)
  encoding.writeVarUint(e, 1)
  encoding.writeVarString(e, 'a')
  encoding.writeVarUint(e, 1)
  for (let i = 0; i < depth; i++) {
    encoding.writeUint8(e, 118) // object
    encoding.writeVarUint(e, 1) // one entry
    encoding.writeVarString(e, 'k')
  }
  encoding.writeUint8(e, 126)
  encoding.writeVarUint(e, 0)
  return encoding.toUint8Array(e)
}

/** ContentAny as a map entry (info 0x08 | 0x20 parentSub) nested `depth` deep under root map "m". */
export function nestedAnyMapEntryUpdate (client, depth = 10_000) {
  const e = encoding.createEncoder()
  oneStructHeader(e, client)
  encoding.writeUint8(e, 0x28)
  encoding.writeVarUint(e, 1)
  encoding.writeVarString(e, 'm')
  encoding.writeVarString(e, 'deep') // parentSub
  encoding.writeVarUint(e, 1)
  writeDeepAnyArray(e, depth)
  encoding.writeVarUint(e, 0)
  return encoding.toUint8Array(e)
}

/** JSON text nested `depth` deep: [[[...null...]]] */
export function deepJsonString (depth = 10_000) {
  return '['.repeat(depth) + 'null' + ']'.repeat(depth)
}

/** ContentEmbed (info 0x05) under root "t" whose JSON is nested `depth` deep. */
export function deepEmbedUpdate (client, depth = 10_000) {
  const e = encoding.createEncoder()
  oneStructHeader(e, client)
  encoding.writeUint8(e, 0x05)
  encoding.writeVarUint(e, 1)
  encoding.writeVarString(e, 't')
  encoding.writeVarString(e, deepJsonString(depth))
  encoding.writeVarUint(e, 0)
  return encoding.toUint8Array(e)
}

/** ContentFormat (info 0x06) under root "t", key "bold", JSON value nested `depth` deep. */
export function deepFormatUpdate (client, depth = 10_000) {
  const e = encoding.createEncoder()
  oneStructHeader(e, client)
  encoding.writeUint8(e, 0x06)
  encoding.writeVarUint(e, 1)
  encoding.writeVarString(e, 't')
  encoding.writeVarString(e, 'bold')
  encoding.writeVarString(e, deepJsonString(depth))
  encoding.writeVarUint(e, 0)
  return encoding.toUint8Array(e)
}

/** ContentDoc (info 0x09) under root "a": guid "g", options any nested `depth` deep. */
export function deepSubdocOptionsUpdate (client, depth = 10_000) {
  const e = encoding.createEncoder()
  oneStructHeader(e, client)
  encoding.writeUint8(e, 0x09)
  encoding.writeVarUint(e, 1)
  encoding.writeVarString(e, 'a')
  encoding.writeVarString(e, 'g')
  writeDeepAnyArray(e, depth)
  encoding.writeVarUint(e, 0)
  return encoding.toUint8Array(e)
}

/** One Item with ContentString (info 0x04) under root "t" whose bytes are not UTF-8. */
export function invalidUtf8StringUpdate (client, bytes = [0xc3, 0x28, 0xff, 0xfe]) {
  const e = encoding.createEncoder()
  oneStructHeader(e, client)
  encoding.writeUint8(e, 0x04)
  encoding.writeVarUint(e, 1)
  encoding.writeVarString(e, 't')
  encoding.writeVarUint(e, bytes.length)
  for (const b of bytes) encoding.writeUint8(e, b)
  encoding.writeVarUint(e, 0)
  return encoding.toUint8Array(e)
}

/** Same as above but the invalid UTF-8 is in the parent (root type) name. */
export function invalidUtf8ParentNameUpdate (client) {
  const e = encoding.createEncoder()
  oneStructHeader(e, client)
  encoding.writeUint8(e, 0x04)
  encoding.writeVarUint(e, 1)
  encoding.writeVarUint(e, 2)
  encoding.writeUint8(e, 0xff)
  encoding.writeUint8(e, 0xfe)
  encoding.writeVarString(e, 'hostile')
  encoding.writeVarUint(e, 0)
  return encoding.toUint8Array(e)
}

/** ContentString whose length prefix (1000) points past the end of the update. */
export function lengthPastEndUpdate (client) {
  const e = encoding.createEncoder()
  oneStructHeader(e, client)
  encoding.writeUint8(e, 0x04)
  encoding.writeVarUint(e, 1)
  encoding.writeVarString(e, 't')
  encoding.writeVarUint(e, 1000)
  for (const b of Buffer.from('abc')) encoding.writeUint8(e, b)
  return encoding.toUint8Array(e)
}

/**
 * Updates whose counts / lengths claim far more data than follows (a decoder that
 * pre-allocates from them aborts the process). `which`: structs | anyArray | string | deleteRanges
 */
export function hugeLengthUpdate (client, which) {
  const HUGE = Number.MAX_SAFE_INTEGER
  const e = encoding.createEncoder()
  if (which === 'structs') {
    encoding.writeVarUint(e, 1)
    encoding.writeVarUint(e, HUGE) // number of structs
    encoding.writeVarUint(e, client)
    encoding.writeVarUint(e, 0)
    return encoding.toUint8Array(e)
  }
  if (which === 'deleteRanges') {
    encoding.writeVarUint(e, 0) // no structs
    encoding.writeVarUint(e, 1) // one client in the delete set
    encoding.writeVarUint(e, client)
    encoding.writeVarUint(e, HUGE) // number of ranges
    return encoding.toUint8Array(e)
  }
  oneStructHeader(e, client)
  if (which === 'anyArray') {
    encoding.writeUint8(e, 0x08)
    encoding.writeVarUint(e, 1)
    encoding.writeVarString(e, 'a')
    encoding.writeVarUint(e, 1)
    encoding.writeUint8(e, 117)
    encoding.writeVarUint(e, 0xffffffff) // array length
  } else if (which === 'string') {
    encoding.writeUint8(e, 0x04)
    encoding.writeVarUint(e, 1)
    encoding.writeVarString(e, 't')
    encoding.writeVarUint(e, HUGE) // string byte length
  } else {
    throw new Error('unknown variant ' + which)
  }
  return encoding.toUint8Array(e)
}

/** A real update (text `marker` under root "t") cut in half. */
export function truncatedUpdate (client, marker) {
  const doc = new Y.Doc()
  doc.clientID = client
  doc.getText('t').insert(0, marker)
  doc.getMap('m').set('hostile', marker)
  const full = Y.encodeStateAsUpdate(doc)
  doc.destroy()
  return full.slice(0, Math.floor(full.length / 2))
}

// ---------------------------------------------------------------------------
// JWT (HS256) helpers
// ---------------------------------------------------------------------------

export function b64url (bufOrString) {
  return Buffer.from(bufOrString).toString('base64url')
}

export function signJwt (payload, secret, header = { alg: 'HS256', typ: 'JWT' }) {
  const h = b64url(JSON.stringify(header))
  const p = b64url(JSON.stringify(payload))
  const sig = createHmac('sha256', secret).update(`${h}.${p}`).digest('base64url')
  return `${h}.${p}.${sig}`
}

export function decodeJwt (token) {
  const [h, p] = token.split('.')
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8'))
  }
}

export { Y, encoding, decoding, syncProtocol, awarenessProtocol }
