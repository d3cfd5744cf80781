#!/usr/bin/env node
// Fan-out latency benchmark (not a test).
//
// Opens N stock y-websocket providers on one document; one of them inserts a
// tagged string K times (spaced --interval ms). For each edit it measures the
// time from the local insert until ALL N-1 other providers have observed it
// (ytext.observe; the tag carries the edit number and send timestamp), and
// prints p50/p95/p99/max in ms.
//
//   node bench/fanout.mjs                       # starts target/debug/tandem (or $TANDEM_BIN)
//   node bench/fanout.mjs --url ws://127.0.0.1:8080 --clients 100 --edits 500
//
// Options: --url ws://HOST:PORT (use a running server instead of starting one)
//          --clients N (50) --edits K (200) --interval MS (20) --doc ID
//          --timeout MS (15000, wait for the last edits) --json (one JSON line at the end)
//          --server-arg ARG (repeatable; extra args for the spawned `tandem dev`)
// All clients live in this one Node process, so the numbers include client-side
// decoding for N-1 receivers; compare runs made with the same N.

import { parseArgs } from 'node:util'
import { performance } from 'node:perf_hooks'
import * as Y from 'yjs'
import { makeProvider, waitFor, sleep } from '../test/util.mjs'
import { startServer } from '../test/server.mjs'

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    clients: { type: 'string', default: '50' },
    edits: { type: 'string', default: '200' },
    interval: { type: 'string', default: '20' },
    doc: { type: 'string' },
    timeout: { type: 'string', default: '15000' },
    json: { type: 'boolean', default: false },
    'server-arg': { type: 'string', multiple: true, default: [] },
    help: { type: 'boolean', short: 'h', default: false }
  }
})

if (opt.help) {
  console.log('usage: node bench/fanout.mjs [--url ws://HOST:PORT] [--clients 50] [--edits 200] [--interval 20] [--doc ID] [--timeout 15000] [--json] [--server-arg ARG]...')
  process.exit(0)
}

const N = Number(opt.clients)
const K = Number(opt.edits)
const INTERVAL = Number(opt.interval)
const TIMEOUT = Number(opt.timeout)
const docId = opt.doc ?? `fanout-${Date.now()}`
if (!(N >= 2) || !(K >= 1) || !(INTERVAL >= 0)) {
  console.error('need --clients >= 2, --edits >= 1, --interval >= 0')
  process.exit(2)
}

function percentile (sorted, p) {
  if (sorted.length === 0) return NaN
  const rank = Math.ceil((p / 100) * sorted.length)
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))]
}

const TAG = /#(\d+)@/g

async function main () {
  let server = null
  let url = opt.url
  if (!url) {
    server = await startServer({ name: 'fanout-bench', args: opt['server-arg'] })
    url = server.url
  }
  url = url.replace(/\/+$/, '').replace(/\/doc$/, '')

  const clients = []
  const sendAt = new Float64Array(K).fill(NaN)
  const receivedBy = new Uint32Array(K)
  const doneAt = new Float64Array(K).fill(NaN)

  const t0 = performance.now()
  // connect in small batches so the handshake storm does not dominate
  for (let i = 0; i < N; i += 10) {
    const batch = []
    for (let j = i; j < Math.min(N, i + 10); j++) {
      const doc = new Y.Doc()
      const provider = makeProvider(url, docId, doc)
      clients.push({ doc, provider })
      batch.push(provider)
    }
    await waitFor(() => batch.every((p) => p.synced), 60_000, { message: 'providers did not sync' })
  }
  const connectMs = performance.now() - t0

  for (let i = 1; i < N; i++) {
    const ytext = clients[i].doc.getText('t')
    ytext.observe((event) => {
      const now = performance.now()
      for (const op of event.delta) {
        if (typeof op.insert !== 'string') continue
        TAG.lastIndex = 0
        let m
        while ((m = TAG.exec(op.insert)) !== null) {
          const k = Number(m[1])
          if (k < K && ++receivedBy[k] === N - 1) doneAt[k] = now
        }
      }
    })
  }

  const writer = clients[0].doc.getText('t')
  for (let k = 0; k < K; k++) {
    const ts = performance.now()
    sendAt[k] = ts
    writer.insert(writer.length, `#${k}@${ts.toFixed(3)};`)
    if (INTERVAL > 0) await sleep(INTERVAL)
  }
  try {
    await waitFor(() => receivedBy.every((c) => c >= N - 1), TIMEOUT, { interval: 50 })
  } catch {}

  const lat = []
  let missing = 0
  for (let k = 0; k < K; k++) {
    if (Number.isNaN(doneAt[k])) missing++
    else lat.push(doneAt[k] - sendAt[k])
  }
  lat.sort((a, b) => a - b)
  const result = {
    command: process.argv.map((a) => (/\s/.test(a) ? JSON.stringify(a) : a)).join(' '),
    url,
    doc: docId,
    clients: N,
    edits: K,
    interval_ms: INTERVAL,
    connect_ms: +connectMs.toFixed(1),
    complete: lat.length,
    missing,
    p50_ms: +percentile(lat, 50).toFixed(2),
    p95_ms: +percentile(lat, 95).toFixed(2),
    p99_ms: +percentile(lat, 99).toFixed(2),
    max_ms: +(lat.length ? lat[lat.length - 1] : NaN).toFixed(2),
    mean_ms: +(lat.reduce((a, b) => a + b, 0) / (lat.length || 1)).toFixed(2)
  }

  console.log(`command: ${result.command}`)
  console.log(`server: ${server ? `spawned ${server.args.join(' ')}` : url}  doc: ${docId}`)
  console.log(`clients: ${N} (1 writer, ${N - 1} receivers)  edits: ${K}  interval: ${INTERVAL} ms  connect: ${result.connect_ms} ms`)
  console.log(`fan-out latency (insert -> all ${N - 1} receivers observed), ms: ` +
    `p50 ${result.p50_ms}  p95 ${result.p95_ms}  p99 ${result.p99_ms}  max ${result.max_ms}  mean ${result.mean_ms}`)
  if (missing) console.log(`WARNING: ${missing}/${K} edits did not reach every receiver within ${TIMEOUT} ms`)
  if (opt.json) console.log(JSON.stringify(result))

  for (const c of clients) {
    c.provider.destroy()
    c.doc.destroy()
  }
  if (server) {
    const code = await server.stop()
    if (code !== 0) console.error(`server exited with ${code}\n${server.logs()}`)
  }
  process.exit(missing ? 1 : 0)
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
