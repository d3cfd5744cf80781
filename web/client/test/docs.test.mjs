// The Yjs provider of @tandem/client: documents over the /v1 socket converge with each other and with
// stock y-websocket providers on /doc/{id}, share awareness, survive going offline, and honour
// read-only grants; one socket carries documents and rooms together.

import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { dumpLogsOnFailure } from '../../test/server.mjs'
import { Y, connectedClient, destroyAll } from '../../test/util.mjs'
import { startAuthServer, token, client, waitFor, sleep } from './helpers.mjs'

const text = (doc) => doc.getText('t').toString()
const sameState = (a, b) => Buffer.from(Y.encodeStateAsUpdate(a)).equals(Buffer.from(Y.encodeStateAsUpdate(b))) ||
  (text(a) === text(b) && Buffer.from(Y.encodeStateVector(a)).equals(Buffer.from(Y.encodeStateVector(b))))

describe('Yjs documents over /v1', () => {
  let server
  const open = []
  const stock = []
  before(async () => { server = await startAuthServer() })
  after(async () => {
    destroyAll(stock)
    for (const c of open) c.close()
    await server?.stop()
  })
  dumpLogsOnFailure(afterEach, () => [server])

  async function tandem (sub, rooms, docs) {
    const c = await client(server, await token(sub, rooms, docs))
    open.push(c)
    return c
  }

  it('v1 providers and a stock y-websocket provider converge and share awareness', async () => {
    const a = await tandem('ada')
    const b = await tandem('bob')
    const da = new Y.Doc()
    const db = new Y.Doc()
    const pa = a.doc('shared', da)
    const pb = b.doc('shared', db)
    await waitFor(() => pa.synced && pb.synced, 10_000, 'v1 providers synced')
    const s = await connectedClient(server.url, 'shared', { params: { token: await token('cy') } })
    stock.push(s)
    da.getText('t').insert(0, 'ada ')
    db.getText('t').insert(0, 'bob ')
    s.doc.getText('t').insert(0, 'cy ')
    await waitFor(() => text(da).length === 11 && text(da) === text(db) && text(db) === text(s.doc), 10_000,
      () => `converged: ${JSON.stringify([text(da), text(db), text(s.doc)])}`)
    assert.ok(sameState(da, db) && sameState(db, s.doc))
    pa.awareness.setLocalStateField('user', { name: 'Ada' })
    await waitFor(() => [...s.provider.awareness.getStates().values()].some((st) => st.user?.name === 'Ada'), 10_000, 'stock client sees ada')
    s.provider.awareness.setLocalStateField('user', { name: 'Cy' })
    await waitFor(() => [...pb.awareness.getStates().values()].some((st) => st.user?.name === 'Cy'), 10_000, 'v1 client sees cy')
    pa.destroy()
    await waitFor(() => ![...pb.awareness.getStates().values()].some((st) => st.user?.name === 'Ada'), 10_000, 'ada gone after destroy')
    pb.destroy()
  })

  it('offline edits are sent after the reconnect', async () => {
    const a = await tandem('ada')
    const b = await tandem('bob')
    const da = new Y.Doc()
    const db = new Y.Doc()
    const pa = a.doc('offline-doc', da)
    const pb = b.doc('offline-doc', db)
    await waitFor(() => pa.synced && pb.synced, 10_000, 'synced')
    a.goOffline()
    da.getText('t').insert(0, 'written offline')
    db.getText('t').insert(0, 'online: ')
    await sleep(200)
    assert.equal(text(db), 'online: ')
    a.goOnline()
    await waitFor(() => text(da) === text(db) && text(da).length === 'written offline'.length + 'online: '.length, 10_000,
      () => `converged: ${JSON.stringify([text(da), text(db)])}`)
    pa.destroy()
    pb.destroy()
  })

  it('a read-only grant syncs but its edits are refused', async () => {
    const w = await tandem('wendy')
    const r = await tandem('rob', ['*=write'], ['ro-*=read'])
    const dw = new Y.Doc()
    const dr = new Y.Doc()
    const pw = w.doc('ro-doc', dw)
    const pr = r.doc('ro-doc', dr)
    const denied = []
    pr.on('permission-denied', (why) => denied.push(why))
    await waitFor(() => pw.synced && pr.synced, 10_000, 'synced')
    dw.getText('t').insert(0, 'official')
    await waitFor(() => text(dr) === 'official', 10_000, 'reader got it')
    dr.getText('t').insert(0, 'graffiti ')
    await waitFor(() => denied.length > 0, 10_000, 'permission denied')
    await sleep(200)
    assert.equal(text(dw), 'official')
    pw.destroy()
    pr.destroy()
  })

  it('one socket carries several documents and a room', async () => {
    const a = await tandem('ada')
    const b = await tandem('bob')
    const docs = ['multi-1', 'multi-2', 'multi-3']
    const pairs = docs.map((id) => {
      const da = new Y.Doc()
      const db = new Y.Doc()
      return [a.doc(id, da), b.doc(id, db), da, db]
    })
    const room = a.room('multi-room')
    const got = []
    const rb = b.room('multi-room')
    rb.on('message', (e) => got.push(e.payload.text))
    await room.join()
    await rb.join()
    await waitFor(() => pairs.every(([pa, pb]) => pa.synced && pb.synced), 10_000, 'all synced')
    pairs.forEach(([, , da], i) => da.getText('t').insert(0, `doc ${i}`))
    await room.send('docs are ready')
    await waitFor(() => pairs.every(([, , , db], i) => text(db) === `doc ${i}`), 10_000, 'every doc arrived')
    await waitFor(() => got.includes('docs are ready'), 5000, 'message arrived')
    for (const [pa, pb] of pairs) { pa.destroy(); pb.destroy() }
  })
})
