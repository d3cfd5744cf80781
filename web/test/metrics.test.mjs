// /healthz and /metrics.
import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, dumpLogsOnFailure } from './server.mjs'
import { connectedClient, destroyAll, waitFor, httpRequest } from './util.mjs'

const REQUIRED = [
  'tandem_connections',
  'tandem_documents_loaded',
  'tandem_updates_applied_total',
  'tandem_apply_seconds',
  'tandem_append_seconds'
]

/** Parse Prometheus text exposition: Map name -> [{ labels, value }]. */
function parseProm (text) {
  const samples = new Map()
  const types = new Map()
  for (const line of text.split('\n')) {
    const l = line.trim()
    if (!l) continue
    if (l.startsWith('# TYPE ')) {
      const [, , name, type] = l.split(/\s+/)
      types.set(name, type)
      continue
    }
    if (l.startsWith('#')) continue
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(l)
    if (!m) throw new Error(`unparsable metrics line: ${l}`)
    const value = Number(m[3] === '+Inf' ? Infinity : m[3])
    if (!samples.has(m[1])) samples.set(m[1], [])
    samples.get(m[1]).push({ labels: m[2] ?? '', value })
  }
  return { samples, types }
}

const sum = (parsed, name) => (parsed.samples.get(name) ?? []).reduce((a, s) => a + s.value, 0)
const has = (parsed, name) => parsed.samples.has(name) || parsed.types.has(name)

async function metrics (server) {
  const r = await httpRequest(server.httpUrl + '/metrics')
  assert.equal(r.status, 200)
  return { raw: r, parsed: parseProm(r.body) }
}

describe('health and metrics', () => {
  let server
  const clients = []

  dumpLogsOnFailure(afterEach, () => [server])

  before(async () => {
    server = await startServer({ name: 'metrics' })
  })

  after(async () => {
    destroyAll(clients)
    if (server) assert.equal(await server.stop(), 0, 'server exit code after SIGINT')
  })

  it('GET /healthz answers 200 ok', async () => {
    const r = await httpRequest(server.httpUrl + '/healthz')
    assert.equal(r.status, 200)
    assert.equal(r.body.trim(), 'ok')
  })

  it('GET /metrics answers 200 Prometheus text with the tandem metric names', async () => {
    const { raw, parsed } = await metrics(server)
    assert.match(String(raw.headers['content-type']), /^text\/plain/, 'content-type')
    for (const name of REQUIRED) {
      assert.ok(raw.body.includes(name), `/metrics lacks ${name}`)
    }
    assert.ok(has(parsed, 'tandem_connections'))
  })

  it('counters and gauges move with real traffic', async () => {
    const before = (await metrics(server)).parsed
    const applied0 = sum(before, 'tandem_updates_applied_total')

    const docIds = ['metrics-a', 'metrics-b']
    for (const d of docIds) {
      for (let i = 0; i < 2; i++) clients.push(await connectedClient(server.url, d))
    }
    for (let k = 0; k < 20; k++) {
      for (const c of clients) c.doc.getArray('list').push([k])
    }
    await waitFor(() => clients.every((c) => c.doc.getArray('list').length === 40), 10_000, {
      message: 'edits did not propagate'
    })

    const after = (await metrics(server)).parsed
    const applied = sum(after, 'tandem_updates_applied_total')
    assert.ok(applied > applied0, `tandem_updates_applied_total did not grow (${applied0} -> ${applied})`)
    assert.ok(sum(after, 'tandem_connections') >= 4, `tandem_connections = ${sum(after, 'tandem_connections')} with 4 open providers`)
    assert.ok(sum(after, 'tandem_documents_loaded') >= 2, `tandem_documents_loaded = ${sum(after, 'tandem_documents_loaded')} with 2 docs in use`)
    for (const h of ['tandem_apply_seconds', 'tandem_append_seconds']) {
      const count = sum(after, h + '_count')
      assert.ok(count > 0, `${h}_count = ${count} after edits (type ${after.types.get(h)})`)
    }

    destroyAll(clients)
    await waitFor(async () => sum((await metrics(server)).parsed, 'tandem_connections') === 0, 5000, {
      message: 'tandem_connections did not drop to 0 after all providers were destroyed'
    })
  })
})
