// Hostile and malformed input: the right RFC 6455 close code, nothing applied,
// persisted or broadcast, the server stays up, other clients keep working.
import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startServer, makeDataDir, dumpLogsOnFailure } from './server.mjs'
import {
  Y, encoding, connectedClient, destroyAll, waitFor, sleep, sendRaw, openRaw, tryUpgrade, httpRequest,
  stateVector, updateMessage, nestedAnyUpdate, invalidUtf8StringUpdate, invalidUtf8ParentNameUpdate,
  lengthPastEndUpdate, truncatedUpdate, nestedAnyObjectUpdate, nestedAnyMapEntryUpdate, deepEmbedUpdate,
  deepFormatUpdate, deepSubdocOptionsUpdate, hugeLengthUpdate, MSG_SYNC, SYNC_STEP2
} from './util.mjs'

const MAX_MESSAGE_BYTES = 65536
const MAX_DOC_BYTES = 65536

/** [0, 1, varbytes(update)]: the same payload delivered as sync step 2 */
function syncStep2Message (update) {
  const e = encoding.createEncoder()
  encoding.writeVarUint(e, MSG_SYNC)
  encoding.writeVarUint(e, SYNC_STEP2)
  encoding.writeVarUint8Array(e, update)
  return encoding.toUint8Array(e)
}

/** An update message of exactly `total` bytes (text of 'X's written by `client`). */
function updateMessageOfExactly (client, total, marker) {
  let n = total - 40
  for (let i = 0; i < 100; i++) {
    const msg = updateMessage(bigValidUpdate(client, n, marker))
    if (msg.length === total) return msg
    n += total - msg.length
  }
  throw new Error(`cannot build a message of exactly ${total} bytes`)
}

/** A valid update of `size` bytes of text written by `client`. */
function bigValidUpdate (client, size, marker) {
  const doc = new Y.Doc()
  doc.clientID = client
  doc.getText('t').insert(0, marker + 'X'.repeat(size))
  const u = Y.encodeStateAsUpdate(doc)
  doc.destroy()
  return u
}

async function assertServerUp (server) {
  assert.equal(server.proc.exitCode, null, 'server process exited')
  assert.equal(server.proc.signalCode, null, 'server process was killed by a signal')
  const r = await httpRequest(server.httpUrl + '/healthz')
  assert.equal(r.status, 200)
  assert.equal(r.body.trim(), 'ok')
}

describe('bad input', () => {
  let server
  let sizeServer
  const dataDir = makeDataDir()
  const clients = []
  /** docs that received hostile input: { docId, hostileClients, markers, baseline } */
  const touched = []
  let editSeq = 0

  dumpLogsOnFailure(afterEach, () => [server, sizeServer])

  before(async () => {
    server = await startServer({ name: 'bad-input', dataDir, args: ['--max-message-bytes', String(MAX_MESSAGE_BYTES)] })
  })

  after(async () => {
    destroyAll(clients)
    if (server) assert.equal(await server.stop(), 0, 'bad-input server exit code after SIGINT')
    if (sizeServer) assert.equal(await sizeServer.stop(), 0, 'size server exit code after SIGINT')
  })

  /** An observer provider with some baseline content on docId. */
  async function observer (docId) {
    const o = await connectedClient(server.url, docId)
    clients.push(o)
    const baseline = `baseline of ${docId}`
    o.doc.getText('t').insert(0, baseline)
    o.doc.getMap('m').set('baseline', true)
    const closes = []
    o.provider.on('connection-close', (ev) => closes.push(ev?.code))
    // make sure the baseline reached the server before the hostile input
    const check = await connectedClient(server.url, docId)
    clients.push(check)
    await waitFor(() => check.doc.getText('t').toString() === baseline, 10_000, { message: 'baseline did not propagate' })
    return { ...o, baseline, closes }
  }

  /**
   * After the hostile input: server alive, observer still connected, a new provider
   * syncs the baseline (and not the hostile content), and edits flow both ways.
   */
  async function assertDocHealthy (obs, docId, { hostileClients = [], markers = [] } = {}) {
    await assertServerUp(server)
    assert.equal(obs.provider.wsconnected, true, 'observer provider was disconnected')
    assert.deepEqual(obs.closes, [], 'observer connection was closed')

    const fresh = await connectedClient(server.url, docId)
    clients.push(fresh)
    await waitFor(() => fresh.doc.getText('t').toString().includes(obs.baseline), 10_000, {
      message: 'fresh provider did not load the baseline'
    })
    for (const doc of [fresh.doc, obs.doc]) {
      const sv = stateVector(doc)
      for (const hc of hostileClients) assert.equal(sv.has(hc), false, `hostile client ${hc} is in the state vector`)
      const content = doc.getText('t').toString() + JSON.stringify(doc.getMap('m').toJSON()) +
        JSON.stringify(doc.getArray('a').toJSON())
      for (const m of markers) assert.ok(!content.includes(m), `hostile marker ${m} is in the document`)
      assert.equal(doc.getArray('a').length, 0, 'hostile ContentAny was applied to root "a"')
    }
    // edits still flow both ways
    const n = `k${++editSeq}`
    fresh.doc.getMap('m').set('fresh-' + n, 1)
    await waitFor(() => obs.doc.getMap('m').get('fresh-' + n) === 1, 10_000, { message: 'observer did not get the fresh client\'s edit' })
    obs.doc.getMap('m').set('obs-' + n, 2)
    await waitFor(() => fresh.doc.getMap('m').get('obs-' + n) === 2, 10_000, { message: 'fresh client did not get the observer\'s edit' })
    touched.push({ docId, hostileClients, markers, baseline: obs.baseline })
  }

  it('a text frame is closed with 1003', async () => {
    const docId = 'bad-text-frame'
    const obs = await observer(docId)
    const res = await sendRaw(server.url, docId, ['{"type":"update","data":"hello"}'])
    assert.equal(res.code, 1003, `close: ${JSON.stringify(res)}`)
    await assertDocHealthy(obs, docId, { markers: ['hello'] })
  })

  it(`a message larger than --max-message-bytes (${MAX_MESSAGE_BYTES}) is closed with 1009`, async () => {
    const docId = 'bad-too-big'
    const obs = await observer(docId)
    const hostile = 880_001
    const marker = 'TOO-BIG-MARKER'
    const msg = updateMessage(bigValidUpdate(hostile, 100_000, marker))
    assert.ok(msg.length > MAX_MESSAGE_BYTES)
    const res = await sendRaw(server.url, docId, [msg])
    assert.equal(res.code, 1009, `close: ${JSON.stringify({ code: res.code, reason: res.reason, error: res.error })}`)
    await assertDocHealthy(obs, docId, { hostileClients: [hostile], markers: [marker] })
  })

  it('a message just under --max-message-bytes is accepted', async () => {
    const docId = 'ok-big-message'
    const obs = await observer(docId)
    const client = 882_101
    const marker = 'BIG-BUT-OK'
    const msg = updateMessage(bigValidUpdate(client, 50_000, marker))
    assert.ok(msg.length < MAX_MESSAGE_BYTES)
    const raw = openRaw(server.url, docId)
    await raw.opened
    raw.send(msg)
    await waitFor(() => obs.doc.getText('t').toString().includes(marker), 10_000, {
      message: 'a 50 KB update under the limit was not delivered'
    })
    raw.close()
    await raw.closed
  })

  it('the size limit is on the message: exactly --max-message-bytes passes, one byte more is 1009', async () => {
    const docId = 'limit-boundary'
    const obs = await observer(docId)
    const okMsg = updateMessageOfExactly(882_201, MAX_MESSAGE_BYTES, 'EXACT-LIMIT')
    assert.equal(okMsg.length, MAX_MESSAGE_BYTES)
    const raw = openRaw(server.url, docId)
    await raw.opened
    raw.send(okMsg)
    await waitFor(() => obs.doc.getText('t').toString().includes('EXACT-LIMIT'), 10_000, {
      message: `a message of exactly ${MAX_MESSAGE_BYTES} bytes was not applied`
    })
    raw.close()
    const tooBig = updateMessageOfExactly(880_301, MAX_MESSAGE_BYTES + 1, 'ONE-BYTE-OVER')
    assert.equal(tooBig.length, MAX_MESSAGE_BYTES + 1)
    const res = await sendRaw(server.url, docId, [tooBig])
    assert.equal(res.code, 1009, `close: ${JSON.stringify({ code: res.code, reason: res.reason, error: res.error })}`)
    await assertDocHealthy(obs, docId, { hostileClients: [880_301], markers: ['ONE-BYTE-OVER'] })
  })

  it('a fragmented message (continuation frames) under the limit is reassembled and applied', async () => {
    const docId = 'fragmented-ok'
    const obs = await observer(docId)
    const raw = openRaw(server.url, docId)
    await raw.opened
    raw.sendFragmented(updateMessage(bigValidUpdate(882_301, 30_000, 'FRAGMENTED-OK')), 7)
    await waitFor(() => obs.doc.getText('t').toString().includes('FRAGMENTED-OK'), 10_000, {
      message: 'a message sent as 7 fragments was not applied'
    })
    raw.close()
    await raw.closed
  })

  it('a message over the limit split into small frames is still closed with 1009', async () => {
    const docId = 'fragmented-too-big'
    const obs = await observer(docId)
    const raw = openRaw(server.url, docId)
    await raw.opened
    const msg = updateMessage(bigValidUpdate(880_302, 200_000, 'FRAGMENTED-TOO-BIG'))
    raw.sendFragmented(msg, 20) // every frame ~10 KB, the message ~200 KB
    const res = await Promise.race([raw.closed, sleep(10_000).then(() => ({ code: null, reason: 'no close' }))])
    raw.terminate()
    // 1006 + EPIPE/ECONNRESET means the server reset the TCP connection while the
    // client was still sending, so the client never read the server's close frame
    assert.equal(res.code, 1009, `close: ${JSON.stringify(res)}`)
    await assertDocHealthy(obs, docId, { hostileClients: [880_302], markers: ['FRAGMENTED-TOO-BIG'] })
  })

  for (const [name, frame] of [
    ['an unknown message type', new Uint8Array([99, 1, 2, 3])],
    ['a truncated message-type varint', new Uint8Array([0x80])],
    ['a truncated sync-subtype varint', new Uint8Array([0, 0xff])],
    ['a truncated update-length varint', new Uint8Array([0, 2, 0xff, 0xff])]
  ]) {
    it(`${name} is closed with 1002`, async () => {
      const docId = 'bad-proto-' + name.replace(/[^a-z]+/g, '-')
      const obs = await observer(docId)
      const res = await sendRaw(server.url, docId, [frame])
      assert.equal(res.code, 1002, `close: ${JSON.stringify({ code: res.code, reason: res.reason, error: res.error })}`)
      await assertDocHealthy(obs, docId)
    })
  }

  const hostileUpdates = [
    ['a ContentAny array nested 10,000 deep (sync update)', 880_002, () => updateMessage(nestedAnyUpdate(880_002, 10_000)), []],
    ['a ContentAny array nested 10,000 deep (sync step 2)', 880_003, () => syncStep2Message(nestedAnyUpdate(880_003, 10_000)), []],
    ['invalid UTF-8 in a ContentString', 880_004, () => updateMessage(invalidUtf8StringUpdate(880_004)), ['\uFFFD(']],
    ['invalid UTF-8 in a root type name', 880_005, () => updateMessage(invalidUtf8ParentNameUpdate(880_005)), ['hostile']],
    ['a string length prefix past the end', 880_006, () => updateMessage(lengthPastEndUpdate(880_006)), ['abc']],
    ['a truncated update', 880_007, () => updateMessage(truncatedUpdate(880_007, 'TRUNCATED-MARKER')), ['TRUNCATED-MARKER']],
    // the same depth bomb through the other content types that carry nested values
    ['a ContentAny object nested 10,000 deep', 880_008, () => updateMessage(nestedAnyObjectUpdate(880_008, 10_000)), []],
    ['a nested ContentAny as a map entry (parentSub)', 880_009, () => updateMessage(nestedAnyMapEntryUpdate(880_009, 10_000)), []],
    ['a ContentEmbed whose JSON is nested 10,000 deep', 880_010, () => updateMessage(deepEmbedUpdate(880_010, 10_000)), []],
    ['a ContentFormat whose JSON value is nested 10,000 deep', 880_011, () => updateMessage(deepFormatUpdate(880_011, 10_000)), []],
    ['a ContentDoc whose options are nested 10,000 deep', 880_012, () => updateMessage(deepSubdocOptionsUpdate(880_012, 10_000)), []],
    // length prefixes / counts far past the end of the update
    ['a struct count of 2^53-1', 880_013, () => updateMessage(hugeLengthUpdate(880_013, 'structs')), []],
    ['an Any array length of 2^32-1', 880_014, () => updateMessage(hugeLengthUpdate(880_014, 'anyArray')), []],
    ['a string length of 2^53-1', 880_015, () => updateMessage(hugeLengthUpdate(880_015, 'string')), []],
    ['a delete-set range count of 2^53-1', 880_016, () => updateMessage(hugeLengthUpdate(880_016, 'deleteRanges')), []]
  ]
  for (const [name, client, build, markers] of hostileUpdates) {
    it(`${name} is closed with 1007, not applied/broadcast/persisted`, async () => {
      const docId = 'bad-update-' + client
      const obs = await observer(docId)
      const msg = build()
      assert.ok(msg.length < MAX_MESSAGE_BYTES, 'hostile message must fit under the size limit')
      const res = await sendRaw(server.url, docId, [msg])
      assert.equal(res.code, 1007, `close: ${JSON.stringify({ code: res.code, reason: res.reason, error: res.error })}`)
      await assertDocHealthy(obs, docId, { hostileClients: [client], markers })
    })
  }

  it('control: the same hand-built shapes nested only 3 deep are valid and get applied', async () => {
    const shapes = [
      ['ContentAny array', nestedAnyUpdate, (d) => assert.deepEqual(d.getArray('a').toJSON(), [[[[null]]]])],
      ['ContentAny object', nestedAnyObjectUpdate, (d) => assert.deepEqual(d.getArray('a').toJSON(), [{ k: { k: { k: null } } }])],
      ['ContentAny map entry', nestedAnyMapEntryUpdate, (d) => assert.deepEqual(d.getMap('m').get('deep'), [[[null]]])],
      ['ContentEmbed', deepEmbedUpdate, (d) => assert.deepEqual(d.getText('t').toDelta(), [{ insert: [[[null]]] }])],
      ['ContentFormat', deepFormatUpdate, (d) => assert.equal(d.getText('t').length, 0)],
      ['ContentDoc', deepSubdocOptionsUpdate, (d) => assert.equal(d.getArray('a').length, 1)]
    ]
    let i = 0
    for (const [name, build, check] of shapes) {
      const docId = `control-shape-${++i}`
      const client = 883_000 + i
      const obs = await connectedClient(server.url, docId)
      clients.push(obs)
      const raw = openRaw(server.url, docId)
      await raw.opened
      raw.send(updateMessage(build(client, 3)))
      await waitFor(() => stateVector(obs.doc).has(client), 5000, { message: `${name} nested 3 deep was not applied/broadcast` })
      check(obs.doc)
      raw.close()
      await raw.closed
      assert.notEqual((await raw.closed).code, 1007, `${name} nested 3 deep was refused`)
    }
  })

  for (const [name, frame] of [
    ['a sync step 1 whose state vector is truncated', new Uint8Array([0, 0, 2, 5, 1])],
    ['a sync step 1 whose state vector claims 2^32-1 entries', new Uint8Array([0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0x0f])],
    ['an awareness message with a truncated payload', new Uint8Array([1, 3, 1, 2, 3])],
    ['an awareness state that is not JSON', (() => {
      const inner = encoding.createEncoder()
      encoding.writeVarUint(inner, 1)
      encoding.writeVarUint(inner, 5)
      encoding.writeVarUint(inner, 1)
      encoding.writeVarString(inner, '{not json')
      const e = encoding.createEncoder()
      encoding.writeVarUint(e, 1)
      encoding.writeVarUint8Array(e, encoding.toUint8Array(inner))
      return encoding.toUint8Array(e)
    })()]
  ]) {
    it(`${name} is closed with 1002 or 1007 and the server stays up`, async () => {
      const docId = 'bad-msg-' + name.replace(/[^a-z0-9]+/g, '-')
      const obs = await observer(docId)
      const res = await sendRaw(server.url, docId, [frame])
      assert.ok([1002, 1007].includes(res.code), `close: ${JSON.stringify({ code: res.code, reason: res.reason, error: res.error })}`)
      await assertDocHealthy(obs, docId)
    })
  }

  it('several hostile updates in a row on one doc do not disturb its other clients', async () => {
    const docId = 'bad-burst'
    const obs = await observer(docId)
    const ids = [880_201, 880_202, 880_203]
    const results = await Promise.all([
      sendRaw(server.url, docId, [updateMessage(nestedAnyUpdate(ids[0], 10_000))]),
      sendRaw(server.url, docId, [updateMessage(invalidUtf8StringUpdate(ids[1]))]),
      sendRaw(server.url, docId, [updateMessage(lengthPastEndUpdate(ids[2]))])
    ])
    assert.deepEqual(results.map((r) => r.code), [1007, 1007, 1007])
    await assertDocHealthy(obs, docId, { hostileClients: ids })
  })

  it('invalid doc ids get HTTP 400 and no upgrade; valid edge cases upgrade', async () => {
    const bad = [
      ['empty', '/doc/'],
      ['129 chars', '/doc/' + 'a'.repeat(129)],
      ['leading dot', '/doc/.hidden'],
      ['space', '/doc/has%20space'],
      ['slash', '/doc/a/b'],
      ['encoded slash', '/doc/a%2Fb'],
      ['non-ascii', '/doc/%C3%A9t%C3%A9'],
      ['semicolon', '/doc/a;b'],
      ['star', '/doc/a*b']
    ]
    for (const [label, path] of bad) {
      const r = await tryUpgrade(server.url, null, { path })
      assert.equal(r.opened, false, `${label} (${path}) was upgraded`)
      assert.equal(r.status, 400, `${label} (${path}): expected HTTP 400, got ${r.status} (${r.error})`)
    }
    for (const id of ['a'.repeat(128), 'A-z_0.9~:x', 'x', 'a.']) {
      const r = await tryUpgrade(server.url, id)
      assert.equal(r.opened, true, `valid id ${id} was refused: ${r.status} ${r.error}`)
    }
    await assertServerUp(server)
  })

  it(`a doc growing past --max-doc-bytes (${MAX_DOC_BYTES}) is closed with 1009 and the excess is not applied`, async () => {
    sizeServer = await startServer({ name: 'bad-input-docsize', args: ['--max-doc-bytes', String(MAX_DOC_BYTES)] })
    const docId = 'big-doc'
    const obs = await connectedClient(sizeServer.url, docId)
    clients.push(obs)

    const writer = new Y.Doc()
    writer.clientID = 881_000
    const pending = []
    writer.on('update', (u) => pending.push(u))
    const raw = openRaw(sizeServer.url, docId)
    await raw.opened
    let closed = null
    raw.closed.then((c) => { closed = c })

    const CHUNK = 16 * 1024
    const marker = (i) => `<chunk-${i}>`
    let lastSent = -1
    for (let i = 0; i < 20 && closed === null; i++) {
      const text = writer.getText('t')
      text.insert(text.length, marker(i) + String.fromCharCode(65 + i).repeat(CHUNK))
      const u = pending.shift()
      raw.send(updateMessage(u))
      lastSent = i
      // wait until the chunk is broadcast or the socket is closed
      await waitFor(() => closed !== null || obs.doc.getText('t').toString().includes(marker(i)), 10_000, {
        message: `chunk ${i} neither broadcast nor refused`
      })
    }
    await waitFor(() => closed !== null, 5000, { message: `no close after ${lastSent + 1} chunks of 16 KB (limit ${MAX_DOC_BYTES})` })
    assert.equal(closed.code, 1009, `close: ${JSON.stringify(closed)}`)
    assert.ok(lastSent >= 1, 'the first 16 KB chunk should fit into a 64 KB doc')
    writer.destroy()

    // the refusing chunk never reached anyone; a fresh client gets the same state as the observer
    await sleep(300)
    assert.ok(!obs.doc.getText('t').toString().includes(marker(lastSent)), 'the chunk that exceeded the limit was broadcast')
    const fresh = await connectedClient(sizeServer.url, docId)
    clients.push(fresh)
    assert.ok(!fresh.doc.getText('t').toString().includes(marker(lastSent)), 'the chunk that exceeded the limit was applied')
    assert.equal(fresh.doc.getText('t').toString(), obs.doc.getText('t').toString())
    assert.ok(Y.encodeStateAsUpdate(fresh.doc).length <= MAX_DOC_BYTES + 1024,
      `doc is ${Y.encodeStateAsUpdate(fresh.doc).length} bytes, limit ${MAX_DOC_BYTES}`)
    assert.equal(sizeServer.proc.exitCode, null)

    // other docs on that server are unaffected
    const other = await connectedClient(sizeServer.url, 'small-doc')
    const other2 = await connectedClient(sizeServer.url, 'small-doc')
    clients.push(other, other2)
    other.doc.getText('t').insert(0, 'still fine')
    await waitFor(() => other2.doc.getText('t').toString() === 'still fine', 10_000)
  })

  it('after a restart every doc has its baseline and none of the hostile content', async () => {
    destroyAll(clients)
    assert.ok(touched.length >= 10, `expected the earlier cases to have run (touched ${touched.length})`)
    assert.equal(await server.stop(), 0, 'exit code after SIGINT')
    server = await startServer({ name: 'bad-input-restarted', dataDir })
    for (const t of touched) {
      const c = await connectedClient(server.url, t.docId)
      clients.push(c)
      await waitFor(() => c.doc.getText('t').toString().includes(t.baseline), 10_000, {
        message: `${t.docId}: baseline missing after restart`
      })
      const sv = stateVector(c.doc)
      for (const hc of t.hostileClients) assert.equal(sv.has(hc), false, `${t.docId}: hostile client ${hc} persisted`)
      const content = c.doc.getText('t').toString() + JSON.stringify(c.doc.getMap('m').toJSON())
      for (const m of t.markers) assert.ok(!content.includes(m), `${t.docId}: hostile marker ${m} persisted`)
      assert.equal(c.doc.getArray('a').length, 0, `${t.docId}: hostile ContentAny persisted`)
    }
    await assertServerUp(server)
  })
})
