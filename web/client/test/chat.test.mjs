// The scenario with the TypeScript client against the real server: two users with three tabs
// chat, see each other's presence once per user, see typing start and stop; one drops offline and on
// reconnect gets exactly the missed messages in order with no duplicates; a send retried after a
// dropped connection appears once.

import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { dumpLogsOnFailure } from '../../test/server.mjs'
import { startAuthServer, token, client, collect, waitFor, sleep, raw } from './helpers.mjs'

describe('chat, presence and typing with @tandem/client', () => {
  let server
  const open = []
  before(async () => {
    // A short presence flush keeps the test quick; typing expires after 1.5 s without renewal.
    server = await startAuthServer(['--presence-flush-ms', '30', '--typing-timeout-ms', '1500'])
  })
  after(async () => {
    for (const c of open) c.close()
    await server?.stop()
  })
  dumpLogsOnFailure(afterEach, () => [server])

  async function tab (sub) {
    const c = await client(server, await token(sub))
    open.push(c)
    return c
  }

  it('two users, three tabs: chat, presence per user, typing, offline resume, retried send', async () => {
    const [ada1, ada2, bob] = [await tab('ada'), await tab('ada'), await tab('bob')]
    assert.equal(ada1.user, 'ada')
    const rooms = [ada1, ada2, bob].map((c) => c.room('team'))
    const logs = rooms.map(collect)
    await rooms[0].join({ state: { status: 'online', tab: 1 } })
    await rooms[1].join({ state: { status: 'online', tab: 2 } })
    await rooms[2].join({ state: { status: 'away' } })

    // Presence: one entry per user, ada's two tabs merged.
    for (const r of rooms) {
      await waitFor(() => r.presence.size === 2 && r.presence.get('ada')?.connections === 2,
        5000, () => `merged presence, have ${JSON.stringify([...r.presence.values()])}`)
      assert.deepEqual([...r.presence.keys()].sort(), ['ada', 'bob'])
      assert.deepEqual(r.presence.get('bob').state, { status: 'away' })
    }

    // Chat: every tab sees every message once, in the same order; acks carry (epoch, seq).
    const a1 = await rooms[0].send('hello from ada')
    const a2 = await rooms[2].send('hi ada, bob here')
    assert.ok(a1.epoch >= 1 && a1.seq >= 1)
    assert.ok(a2.seq > a1.seq)
    for (const l of logs) {
      await waitFor(() => l.texts().length === 2, 5000, 'both messages everywhere')
      assert.deepEqual(l.texts(), ['hello from ada', 'hi ada, bob here'])
    }
    const sent = logs[0].events.find((e) => e.seq === a1.seq)
    assert.equal(sent.actor, 'ada')
    assert.equal(sent.type, 'chat.message.sent')

    // Typing: start and stop, seen by the other user's tabs, once per user.
    rooms[2].typing(true)
    await waitFor(() => rooms[0].typists.includes('bob') && rooms[1].typists.includes('bob'), 5000, 'bob typing')
    assert.deepEqual(rooms[0].typists, ['bob'])
    rooms[2].typing(false)
    await waitFor(() => rooms[0].typists.length === 0 && rooms[1].typists.length === 0, 5000, 'bob stopped')
    // Typing expires by itself when not renewed (a client that vanished mid-word).
    rooms[0].typing(true)
    await waitFor(() => rooms[2].typists.includes('ada'), 5000, 'ada typing')
    await waitFor(() => rooms[2].typists.length === 0, 5000, 'ada typing expired')

    // Bob goes offline: his presence disappears for ada; ada sends five messages meanwhile.
    bob.goOffline()
    await waitFor(() => !rooms[0].presence.has('bob'), 5000, 'bob gone from presence')
    const missed = []
    for (let i = 0; i < 5; i++) {
      const text = `while you were away ${i}`
      missed.push(text)
      await rooms[i % 2].send(text)
    }
    // Bob also sends while offline: queued, sent once after the reconnect.
    const queued = rooms[2].send('sent while offline')
    await sleep(100)
    bob.goOnline()
    const qAck = await queued
    assert.ok(qAck.seq > a2.seq)
    await waitFor(() => logs[2].texts().length === 8, 5000, () => `bob caught up: ${JSON.stringify(logs[2].texts())}`)
    assert.deepEqual(logs[2].texts(), ['hello from ada', 'hi ada, bob here', ...missed, 'sent while offline'])
    // In order, no duplicates, no gaps in what bob saw after his first position.
    const seqs = logs[2].seqs()
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b))
    assert.equal(new Set(seqs).size, seqs.length)
    await waitFor(() => rooms[0].presence.has('bob'), 5000, 'bob back in presence')

    // A send retried after a dropped connection appears once: drop the socket right after sending,
    // so the frame may or may not have reached the server before the ack could come back.
    const retried = rooms[2].send('sent just before a drop', { id: 'bob-drop-1' })
    bob.dropConnection()
    const rAck = await retried
    // The same id again (an application-level retry) is acknowledged as a duplicate.
    const again = await rooms[2].send('sent just before a drop', { id: 'bob-drop-1' })
    assert.equal(again.seq, rAck.seq)
    assert.equal(again.duplicate, true)
    for (const l of logs) {
      await waitFor(() => l.texts().includes('sent just before a drop'), 5000, 'retried message everywhere')
    }
    await sleep(300)
    for (const l of logs) {
      assert.equal(l.texts().filter((t) => t === 'sent just before a drop').length, 1)
    }
    const hist = await rooms[0].history({ limit: 100 })
    const copies = hist.filter((e) => e.payload?.client_msg_id === 'bob-drop-1')
    assert.equal(copies.length, 1, 'the log holds the retried message once')
    // Every tab saw the same chat order.
    assert.deepEqual(logs[0].texts(), logs[1].texts())

    // Leaving (ada's second tab, in no other room): the reply comes, ada stays present via tab 1.
    await rooms[1].leave()
    await sleep(200)
    assert.equal(rooms[2].presence.get('ada')?.connections, 1)
  })

  it('offline: a leave cancels the queued join, and close() settles queued sends', async () => {
    const ada = await tab('ada')
    const bob = await tab('bob')
    const rb = bob.room('offline-room')
    await rb.join()
    ada.goOffline()
    const ra = ada.room('offline-room')
    const joining = ra.join()
    await ra.leave()
    await assert.rejects(joining, (e) => e.code === 'left')
    ada.goOnline()
    await ada.ready()
    await sleep(300)
    assert.ok(!rb.presence.has('ada'), 'the cancelled join never reached the server')
    const cy = await tab('cy')
    cy.goOffline()
    const queued = cy.room('offline-room').send('never sent')
    cy.close()
    await assert.rejects(queued, (e) => e.code === 'closed')
  })

  it('a message edit and deletion are events; only the author may change a message', async () => {
    const ada = await tab('ada')
    const bob = await tab('bob')
    const ra = ada.room('edits')
    const rb = bob.room('edits')
    await ra.join()
    await rb.join()
    const lb = collect(rb)
    const { seq } = await ra.send('draft')
    await ra.edit(seq, 'final')
    await assert.rejects(rb.edit(seq, 'hijacked'), (e) => e.code === 'forbidden')
    await assert.rejects(rb.delete(seq), (e) => e.code === 'forbidden')
    await ra.delete(seq)
    await assert.rejects(ra.edit(seq, 'too late'), (e) => e.code === 'not_found')
    await waitFor(() => lb.events.some((e) => e.type === 'chat.message.deleted'), 5000, 'deletion seen')
    const types = lb.events.filter((e) => e.type.startsWith('chat.')).map((e) => [e.type, e.payload.target ?? null])
    assert.deepEqual(types, [['chat.message.sent', null], ['chat.message.edited', seq], ['chat.message.deleted', seq]])
  })

  it('history pages before and after a seq', async () => {
    const ada = await tab('ada')
    const r = ada.room('paging')
    await r.join()
    const acks = []
    for (let i = 0; i < 12; i++) acks.push(await r.send(`m${i}`))
    const last = acks[acks.length - 1].seq
    const newest = await r.history({ before: last + 1, limit: 5 })
    assert.deepEqual(newest.map((e) => e.payload.text), ['m7', 'm8', 'm9', 'm10', 'm11'])
    const older = await r.history({ before: newest[0].seq, limit: 5 })
    assert.deepEqual(older.map((e) => e.payload.text), ['m2', 'm3', 'm4', 'm5', 'm6'])
    const after = await r.history({ after: acks[9].seq, limit: 10 })
    assert.deepEqual(after.map((e) => e.payload.text), ['m10', 'm11'])
    const latest = await r.history({ limit: 3 })
    assert.deepEqual(latest.map((e) => e.payload.text), ['m9', 'm10', 'm11'])
  })

  it('a read-only member receives but cannot send or type', async () => {
    const reader = await client(server, await token('rita', ['announce=read']))
    open.push(reader)
    const writer = await tab('ada')
    const rr = reader.room('announce')
    const lr = collect(rr)
    await rr.join()
    await writer.room('announce').join()
    await writer.room('announce').send('news')
    await waitFor(() => lr.texts().includes('news'), 5000, 'reader got the news')
    await assert.rejects(rr.send('me too'), (e) => e.code === 'forbidden')
    const s = raw(server, await token('rita', ['announce=read']))
    await s.opened
    s.send({ t: 'join', id: 'j', room: 'announce' })
    await s.reply('j')
    s.send({ t: 'typing', id: 'ty', room: 'announce', typing: true })
    assert.equal((await s.reply('ty')).code, 'forbidden')
    s.close()
  })
})
