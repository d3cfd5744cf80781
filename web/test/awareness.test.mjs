// Awareness: states propagate, and the server broadcasts removal when a client goes away.
import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, dumpLogsOnFailure } from './server.mjs'
import {
  connectedClient, destroyAll, waitFor, sleep, openRaw, awarenessMessage, encodeAwarenessEntry,
  queryAwarenessMessage, decodeMessage, parseAwarenessUpdate, MSG_AWARENESS
} from './util.mjs'

// well below the 30 s awareness timeout of the stock client
const REMOVAL_DEADLINE_MS = 5000

describe('awareness', () => {
  let server
  const clients = []
  const raws = []

  dumpLogsOnFailure(afterEach, () => [server])

  before(async () => {
    server = await startServer({ name: 'awareness' })
  })

  after(async () => {
    destroyAll(clients)
    for (const r of raws) r.terminate()
    if (server) assert.equal(await server.stop(), 0, 'server exit code after SIGINT')
  })

  it('peers see each other\'s state; destroy() removes it from the others', async () => {
    const docId = 'aw-destroy'
    const a = await connectedClient(server.url, docId)
    const b = await connectedClient(server.url, docId)
    const other = await connectedClient(server.url, 'aw-other-doc')
    clients.push(a, b, other)

    a.provider.awareness.setLocalStateField('user', { name: 'alice', color: '#f00' })
    b.provider.awareness.setLocalStateField('user', { name: 'bob', color: '#00f' })

    const aId = a.doc.clientID
    const bId = b.doc.clientID
    await waitFor(() => b.provider.awareness.getStates().get(aId)?.user?.name === 'alice', 5000, {
      message: 'B did not receive A\'s awareness state'
    })
    await waitFor(() => a.provider.awareness.getStates().get(bId)?.user?.name === 'bob', 5000, {
      message: 'A did not receive B\'s awareness state'
    })
    assert.deepEqual(b.provider.awareness.getStates().get(aId), { user: { name: 'alice', color: '#f00' } })

    // an update of the state propagates too
    a.provider.awareness.setLocalStateField('cursor', { index: 7 })
    await waitFor(() => b.provider.awareness.getStates().get(aId)?.cursor?.index === 7, 5000, {
      message: 'B did not receive A\'s updated awareness state'
    })

    // a client on another document never sees them
    assert.equal(other.provider.awareness.getStates().has(aId), false)
    assert.equal(other.provider.awareness.getStates().has(bId), false)

    const t0 = Date.now()
    a.provider.destroy()
    await waitFor(() => !b.provider.awareness.getStates().has(aId), REMOVAL_DEADLINE_MS, {
      message: `B still has A's awareness state ${REMOVAL_DEADLINE_MS} ms after A was destroyed`
    })
    assert.ok(Date.now() - t0 < REMOVAL_DEADLINE_MS)
    assert.ok(b.provider.awareness.getStates().has(bId), 'B lost its own state')
  })

  it('the server broadcasts removal when a socket is dropped without a goodbye', async () => {
    const docId = 'aw-drop'
    const b = await connectedClient(server.url, docId)
    clients.push(b)
    b.provider.awareness.setLocalStateField('user', { name: 'bob' })

    // a raw y-websocket client announces a state, then its TCP connection just dies
    const ghostId = 99_001
    const raw = openRaw(server.url, docId)
    raws.push(raw)
    await raw.opened
    raw.send(awarenessMessage(encodeAwarenessEntry(ghostId, 1, { user: { name: 'ghost' } })))
    await waitFor(() => b.provider.awareness.getStates().get(ghostId)?.user?.name === 'ghost', 5000, {
      message: 'B did not receive the raw client\'s awareness state'
    })

    raw.terminate() // no close frame, no null state
    await waitFor(() => !b.provider.awareness.getStates().has(ghostId), REMOVAL_DEADLINE_MS, {
      message: `B still has the dropped client's awareness state after ${REMOVAL_DEADLINE_MS} ms`
    })
  })

  it('the server broadcasts removal when a socket closes cleanly without a null state', async () => {
    const docId = 'aw-close'
    const b = await connectedClient(server.url, docId)
    clients.push(b)

    const ids = [99_101, 99_102] // one connection may carry several awareness client ids
    const raw = openRaw(server.url, docId)
    raws.push(raw)
    await raw.opened
    for (const id of ids) raw.send(awarenessMessage(encodeAwarenessEntry(id, 1, { id })))
    await waitFor(() => ids.every((id) => b.provider.awareness.getStates().get(id)?.id === id), 5000, {
      message: 'B did not receive both raw awareness states'
    })
    raw.close()
    await waitFor(() => ids.every((id) => !b.provider.awareness.getStates().has(id)), REMOVAL_DEADLINE_MS, {
      message: `B still has the closed client's awareness states after ${REMOVAL_DEADLINE_MS} ms`
    })
  })

  it('a late joiner receives the states of clients already present', async () => {
    const docId = 'aw-late'
    const a = await connectedClient(server.url, docId)
    clients.push(a)
    a.provider.awareness.setLocalStateField('user', { name: 'early' })
    await sleep(200)
    const c = await connectedClient(server.url, docId)
    clients.push(c)
    await waitFor(() => c.provider.awareness.getStates().get(a.doc.clientID)?.user?.name === 'early', 5000, {
      message: 'late joiner did not receive the existing awareness state'
    })
  })

  it('query awareness (message type 3) is answered with the known states', async () => {
    const docId = 'aw-query'
    const a = await connectedClient(server.url, docId)
    clients.push(a)
    a.provider.awareness.setLocalStateField('user', { name: 'queried' })
    await sleep(200)
    const raw = openRaw(server.url, docId)
    raws.push(raw)
    await raw.opened
    // whatever the server sends on connect (sync step 1, current states) is not the answer
    await sleep(500)
    raw.messages.length = 0
    raw.send(queryAwarenessMessage())
    const aId = a.doc.clientID
    const msg = await raw.waitForMessage((m) => {
      if (m.type !== MSG_AWARENESS || !m.payload) return false
      try { return parseAwarenessUpdate(m.payload).get(aId)?.state?.user?.name === 'queried' } catch { return false }
    }, 5000)
    assert.equal(decodeMessage(msg).type, MSG_AWARENESS)
    raw.close()
  })
})
