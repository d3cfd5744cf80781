// Offline editing: a provider disconnects, both sides edit, it reconnects, both converge.
import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, dumpLogsOnFailure } from './server.mjs'
import { Y, connectedClient, destroyAll, waitFor, waitSynced, sleep } from './util.mjs'

const sv = (doc) => Buffer.from(Y.encodeStateVector(doc)).toString('hex')

describe('offline edits', () => {
  let server
  const clients = []

  dumpLogsOnFailure(afterEach, () => [server])

  before(async () => {
    server = await startServer({ name: 'offline' })
  })

  after(async () => {
    destroyAll(clients)
    if (server) assert.equal(await server.stop(), 0, 'server exit code after SIGINT')
  })

  it('edits made while disconnected merge with concurrent online edits on reconnect', async () => {
    const docId = 'offline-doc'
    const a = await connectedClient(server.url, docId)
    const b = await connectedClient(server.url, docId)
    clients.push(a, b)

    a.doc.getText('t').insert(0, 'base text. ')
    await waitFor(() => b.doc.getText('t').toString() === 'base text. ', 10_000, {
      message: 'B did not receive the initial text'
    })

    // A goes offline
    const statuses = []
    a.provider.on('status', (e) => statuses.push(e.status))
    a.provider.disconnect()
    await waitFor(() => !a.provider.wsconnected && a.provider.ws === null, 5000)
    assert.equal(a.provider.synced, false)

    // both edit while A is offline
    a.doc.getText('t').insert(0, '[A offline edit]')
    a.doc.getMap('m').set('fromA', 'offline')
    b.doc.getText('t').insert(b.doc.getText('t').length, '[B online edit]')
    b.doc.getMap('m').set('fromB', 'online')

    // B must not see A's offline edit while A is offline
    await sleep(500)
    assert.ok(!b.doc.getText('t').toString().includes('[A offline edit]'), 'B saw an edit from a disconnected client')
    assert.ok(!a.doc.getText('t').toString().includes('[B online edit]'), 'A received an edit while disconnected')

    // A comes back
    a.provider.connect()
    await waitSynced(a.provider, 10_000)
    assert.ok(statuses.includes('connected'))

    await waitFor(() => sv(a.doc) === sv(b.doc) &&
      a.doc.getText('t').toString() === b.doc.getText('t').toString(), 10_000, {
      message: () => `A and B did not converge: A=${JSON.stringify(a.doc.getText('t').toString())} B=${JSON.stringify(b.doc.getText('t').toString())}`
    })
    const text = a.doc.getText('t').toString()
    assert.ok(text.includes('[A offline edit]'), `merged text lacks A's edit: ${text}`)
    assert.ok(text.includes('[B online edit]'), `merged text lacks B's edit: ${text}`)
    assert.ok(text.includes('base text. '))
    assert.deepEqual(a.doc.getMap('m').toJSON(), { fromA: 'offline', fromB: 'online' })
    assert.deepEqual(b.doc.getMap('m').toJSON(), { fromA: 'offline', fromB: 'online' })

    // a third client joining afterwards loads the merged state from the server
    const c = await connectedClient(server.url, docId)
    clients.push(c)
    await waitFor(() => sv(c.doc) === sv(a.doc), 10_000, { message: 'late joiner did not load the merged state' })
    assert.equal(c.doc.getText('t').toString(), text)
    assert.deepEqual(c.doc.getMap('m').toJSON(), { fromA: 'offline', fromB: 'online' })
  })

  it('a client that was offline for several disconnect/reconnect cycles still converges', async () => {
    const docId = 'offline-cycles'
    const a = await connectedClient(server.url, docId)
    const b = await connectedClient(server.url, docId)
    clients.push(a, b)
    for (let i = 0; i < 3; i++) {
      a.provider.disconnect()
      await waitFor(() => a.provider.ws === null, 5000)
      a.doc.getArray('log').push([`a${i}`])
      b.doc.getArray('log').push([`b${i}`])
      a.provider.connect()
      await waitSynced(a.provider, 10_000)
    }
    await waitFor(() => sv(a.doc) === sv(b.doc), 10_000, { message: 'A and B did not converge after cycles' })
    const la = a.doc.getArray('log').toArray()
    assert.deepEqual(la, b.doc.getArray('log').toArray())
    assert.deepEqual([...la].sort(), ['a0', 'a1', 'a2', 'b0', 'b1', 'b2'])
  })
})
