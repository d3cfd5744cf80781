// `tandem dev --database-url`: the same stock-client behaviour with PostgreSQL as the event log.
import { describe, it, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { execFileSync } from 'node:child_process'
import { startServer, makeDataDir, dumpLogsOnFailure } from './server.mjs'
import { Y, connectedClient, destroyAll, waitFor } from './util.mjs'

const DATABASE_URL = process.env.TANDEM_TEST_DATABASE_URL ?? 'postgres://root@127.0.0.1:5432/test'
const sv = (doc) => Buffer.from(Y.encodeStateVector(doc)).toString('hex')

describe('postgres event log', () => {
  let server
  const clients = []
  dumpLogsOnFailure(afterEach, () => [server])
  after(async () => {
    destroyAll(clients)
    if (server) await server.stop().catch(() => server.kill())
  })

  it('edits are committed to PostgreSQL and a restarted server (fresh data dir) loads them', async () => {
    const args = ['--database-url', DATABASE_URL]
    server = await startServer({ name: 'pg-1', args })
    const docId = `pg-doc-${Date.now()}-${process.pid}`
    const a = await connectedClient(server.url, docId)
    const b = await connectedClient(server.url, docId)
    clients.push(a, b)
    a.doc.getText('text').insert(0, 'durable in postgres')
    a.doc.getMap('map').set('k', { nested: [1, 2, 3] })
    await waitFor(() => sv(b.doc) === sv(a.doc), 10_000, { message: 'B did not receive A\'s edits' })
    const expected = { text: a.doc.getText('text').toString(), map: a.doc.getMap('map').toJSON(), sv: sv(a.doc) }
    destroyAll(clients)
    assert.equal(await server.stop('SIGINT'), 0)

    // Whatever B observed is in the events table, with its actor.
    const rows = execFileSync('psql', [DATABASE_URL, '-At', '-c',
      `SELECT count(*), min(actor) FROM events WHERE stream = 'doc:${docId}'`]).toString().trim()
    const [count, actor] = rows.split('|')
    assert.ok(Number(count) >= 1, `events rows: ${rows}`)
    assert.equal(actor, 'anonymous')

    // A different data dir: the state can only come from PostgreSQL.
    server = await startServer({ name: 'pg-2', args, dataDir: makeDataDir() })
    const fresh = await connectedClient(server.url, docId)
    clients.push(fresh)
    await waitFor(() => sv(fresh.doc) === expected.sv, 10_000)
    assert.equal(fresh.doc.getText('text').toString(), expected.text)
    assert.deepEqual(fresh.doc.getMap('map').toJSON(), expected.map)
    destroyAll(clients)
    assert.equal(await server.stop(), 0)
    server = null
  })

  it('with --retain-events, old events are pruned after snapshots and the document still loads', async () => {
    const args = ['--database-url', DATABASE_URL, '--snapshot-every', '5', '--retain-events', '2']
    server = await startServer({ name: 'pg-retain', args })
    const docId = `pg-retain-${Date.now()}-${process.pid}`
    const a = await connectedClient(server.url, docId)
    const b = await connectedClient(server.url, docId)
    clients.push(a, b)
    for (let i = 0; i < 20; i++) {
      a.doc.getText('text').insert(0, String(i % 10))
      await waitFor(() => b.doc.getText('text').length === i + 1, 10_000)
    }
    const expected = { text: a.doc.getText('text').toString(), sv: sv(a.doc) }
    destroyAll(clients)
    assert.equal(await server.stop('SIGINT'), 0)
    const count = Number(execFileSync('psql', [DATABASE_URL, '-At', '-c',
      `SELECT count(*) FROM events WHERE stream = 'doc:${docId}'`]).toString().trim())
    assert.ok(count < 20, `events kept after retention: ${count}`)

    server = await startServer({ name: 'pg-retain-2', args, dataDir: makeDataDir() })
    const fresh = await connectedClient(server.url, docId)
    clients.push(fresh)
    await waitFor(() => sv(fresh.doc) === expected.sv, 10_000)
    assert.equal(fresh.doc.getText('text').toString(), expected.text)
    destroyAll(clients)
    assert.equal(await server.stop(), 0)
    server = null
  })
})
