// Bad input on /v1: oversized messages, unknown rooms, rooms without permission and malformed frames
// each get their documented error code, change nothing, and leave the socket (and server) working.

import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { dumpLogsOnFailure, tryUpgradeV1 } from './bad-input-helpers.mjs'
import { startAuthServer, token, raw, sleep } from './helpers.mjs'

describe('/v1 bad input', () => {
  let server
  before(async () => {
    server = await startAuthServer(['--max-chat-bytes', '1000', '--max-presence-bytes', '200',
      '--max-message-bytes', '65536', '--max-rooms-per-conn', '3'])
  })
  after(async () => { await server?.stop() })
  dumpLogsOnFailure(afterEach, () => [server])

  async function joined (sub = 'ada', rooms = ['team-*=write'], docs = []) {
    const s = raw(server, await token(sub, rooms, docs))
    await s.opened
    await s.next((m) => m.t === 'hello')
    s.send({ t: 'join', id: 'j', room: 'team-1' })
    const j = await s.reply('j')
    assert.equal(j.t, 'joined')
    return s
  }

  async function lastSeq (s) {
    s.send({ t: 'history', id: 'h-last', room: 'team-1', limit: 100 })
    const h = await s.reply('h-last')
    return h.events.length ? h.events[h.events.length - 1].seq : 0
  }

  async function stillWorks (s) {
    s.send({ t: 'ping', id: 'p' })
    assert.equal((await s.reply('p')).t, 'pong')
  }

  it('an oversized chat message is refused with too_large and nothing is appended', async () => {
    const s = await joined()
    await sleep(50)
    const before = await lastSeq(s)
    s.send({ t: 'send', id: 'big', room: 'team-1', text: 'x'.repeat(1001) })
    const e = await s.reply('big')
    assert.deepEqual([e.t, e.code, e.room], ['error', 'too_large', 'team-1'])
    s.send({ t: 'send', id: 'empty', room: 'team-1', text: '' })
    assert.equal((await s.reply('empty')).code, 'bad_request')
    s.send({ t: 'presence', id: 'bigp', room: 'team-1', state: { blob: 'y'.repeat(300) } })
    assert.equal((await s.reply('bigp')).code, 'too_large')
    assert.equal(await lastSeq(s), before, 'nothing appended')
    // The same id can still be used for a valid message: the refusal recorded nothing.
    s.send({ t: 'send', id: 'big', room: 'team-1', text: 'fits' })
    const ack = await s.reply('big')
    assert.equal(ack.t, 'ack')
    assert.equal(ack.duplicate, undefined)
    await stillWorks(s)
    s.close()
  })

  it('a frame over --max-message-bytes closes the socket with 1009', async () => {
    const s = await joined()
    s.send({ t: 'send', id: 'huge', room: 'team-1', text: 'z'.repeat(70_000) })
    const c = await s.closed
    assert.equal(c.code, 1009)
  })

  it('requests for a room the socket has not joined get unknown_room', async () => {
    const s = await joined()
    for (const t of ['send', 'typing', 'presence', 'leave', 'edit', 'delete']) {
      s.send({ t, id: t, room: 'team-2', text: 'x', typing: true, state: {}, target: 1 })
      const e = await s.reply(t)
      assert.equal(e.code, 'unknown_room', t)
    }
    await stillWorks(s)
    s.close()
  })

  it('rooms without permission get forbidden; invalid ids get invalid_id', async () => {
    const s = await joined()
    s.send({ t: 'join', id: 'j2', room: 'secret' })
    assert.equal((await s.reply('j2')).code, 'forbidden')
    s.send({ t: 'history', id: 'h2', room: 'secret' })
    assert.equal((await s.reply('h2')).code, 'forbidden')
    s.send({ t: 'join', id: 'j3', room: '../etc/passwd' })
    assert.equal((await s.reply('j3')).code, 'invalid_id')
    s.send({ t: 'doc.open', id: 'd1', doc: 'a b' })
    assert.equal((await s.reply('d1')).code, 'invalid_id')
    // Document grants are separate: this token has none.
    s.send({ t: 'doc.open', id: 'd2', doc: 'notes' })
    assert.equal((await s.reply('d2')).code, 'forbidden')
    await stillWorks(s)
    s.close()
  })

  it('malformed frames get bad_frame and the socket stays open', async () => {
    const s = await joined()
    const cases = [
      '{not json', '[1,2,3]', '"just a string"', '{}', '{"t":"launch-missiles"}',
      '{"t":"send","room":"team-1","text":5,"id":"n"}', '{"t":"join"}',
      '{"t":"history","room":"team-1","before":-1}', '{"t":"edit","room":"team-1","id":"e","text":"x"}',
      '{"t":"join","room":"team-1","since":{"epoch":"one"}}', '{"t":"ping","id":7}',
      '{"t":"typing","room":"team-1","typing":"yes"}'
    ]
    for (const c of cases) {
      s.sendRaw(c)
      const e = await s.next((m) => m.t === 'error')
      assert.equal(e.code, 'bad_frame', c)
    }
    // A binary frame must start with an open document's id.
    s.sendRaw(Buffer.from([0xff, 0xff, 0xff, 0xff]))
    assert.equal((await s.next((m) => m.t === 'error')).code, 'bad_frame')
    s.sendRaw(Buffer.from([3, 0x61, 0x62, 0x63, 0, 0, 0]))
    const u = await s.next((m) => m.t === 'error')
    assert.deepEqual([u.code, u.doc], ['unknown_doc', 'abc'])
    await stillWorks(s)
    s.close()
  })

  it('a text frame that is not UTF-8 closes with 1007', async () => {
    const s = await joined()
    s.sendRaw(Buffer.from([0x7b, 0xff, 0xfe, 0x7d]), { binary: false })
    assert.equal((await s.closed).code, 1007)
  })

  it('the per-socket room limit gives limit', async () => {
    const s = raw(server, await token('ada', ['*=write']))
    await s.opened
    for (const r of ['r1', 'r2', 'r3']) {
      s.send({ t: 'join', id: r, room: r })
      assert.equal((await s.reply(r)).t, 'joined')
    }
    s.send({ t: 'join', id: 'r4', room: 'r4' })
    assert.equal((await s.reply('r4')).code, 'limit')
    s.send({ t: 'leave', id: 'l1', room: 'r1' })
    assert.equal((await s.reply('l1')).t, 'left')
    s.send({ t: 'join', id: 'r5', room: 'r4' })
    assert.equal((await s.reply('r5')).t, 'joined')
    s.close()
  })

  it('the upgrade needs a valid token', async () => {
    assert.equal(await tryUpgradeV1(server, null), 401)
    assert.equal(await tryUpgradeV1(server, 'not-a-jwt'), 401)
    assert.equal(await tryUpgradeV1(server, await token('ada')), 101)
  })
})
