// Calls: signaling over /v1 against the real `tandem dev`, media through its SFU to independent
// WebRTC peers (aiortc, which decodes VP8 and Opus), the call's lifecycle in the room's log, and
// bad input on the signaling path and the UDP media port.

import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { execFile } from 'node:child_process'
import dgram from 'node:dgram'
import { resolve, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { dumpLogsOnFailure, makeDataDir } from './server.mjs'
import { startAuthServer, token, raw, waitFor } from '../client/test/helpers.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const PEERS = resolve(here, '..', '..', 'signaling', 'e2e', 'aiortc_peers.py')

/** Runs the aiortc peers against `url`; resolves with their report. */
function aiortcPeers (url, room, tokens, seconds = 30) {
  const args = [PEERS, '--url', url, '--room', room, '--peers', String(tokens.length), '--tokens', tokens.join(','), '--seconds', String(seconds)]
  return new Promise((resolve) => {
    execFile('python3', args, { timeout: (seconds + 30) * 1000 }, (err, stdout, stderr) => {
      const line = stdout.trim().split('\n').pop() ?? ''
      let report = null
      try { report = JSON.parse(line) } catch {}
      resolve({ code: err ? (err.code ?? 1) : 0, report, stdout, stderr })
    })
  })
}

/** Minimal SDP offer with one sending video m-line (mid 0), one sending audio m-line (mid 1). */
function fakeOffer () {
  return [
    'v=0', 'o=- 1 1 IN IP4 127.0.0.1', 's=-', 't=0 0', 'a=group:BUNDLE 0 1',
    'm=video 9 UDP/TLS/RTP/SAVPF 96', 'c=IN IP4 0.0.0.0', 'a=mid:0', 'a=sendonly', 'a=rtcp-mux',
    'a=ice-ufrag:abcd', 'a=ice-pwd:abcdefghijklmnopqrstuvwx',
    'a=fingerprint:sha-256 ' + Array(32).fill('AB').join(':'), 'a=setup:actpass', 'a=rtpmap:96 VP8/90000',
    'm=audio 9 UDP/TLS/RTP/SAVPF 111', 'c=IN IP4 0.0.0.0', 'a=mid:1', 'a=sendonly', 'a=rtcp-mux',
    'a=ice-ufrag:abcd', 'a=ice-pwd:abcdefghijklmnopqrstuvwx',
    'a=fingerprint:sha-256 ' + Array(32).fill('AB').join(':'), 'a=setup:actpass', 'a=rtpmap:111 opus/48000/2',
    ''
  ].join('\r\n')
}

describe('calls', () => {
  let server
  before(async () => { server = await startAuthServer() })
  after(async () => { await server?.stop() })
  dumpLogsOnFailure(afterEach, () => [server])

  it('two independent WebRTC peers (aiortc) see and hear each other through the SFU, and the log tells who was in the call', async () => {
    const room = `call-${Date.now()}`
    const tokens = [await token('ada'), await token('bob')]
    const run = await aiortcPeers(server.url + '/v1', room, tokens)
    assert.equal(run.code, 0, `aiortc peers failed:\n${run.stdout}\n${run.stderr.slice(-3000)}`)
    const peers = Object.values(run.report.peers)
    assert.equal(peers.length, 2)
    for (const p of peers) {
      const video = Object.entries(p.frames).filter(([t]) => t.endsWith('-0'))
      assert.ok(video.length === 1 && video[0][1] >= 10, `decoded video frames: ${JSON.stringify(p.frames)}`)
    }
    // The room's history: started, two joined, two left, ended — with actors.
    const s = raw(server, await token('eve', ['*=read']))
    await s.opened
    s.send({ t: 'join', id: 'j', room })
    await s.reply('j')
    s.send({ t: 'history', id: 'h', room, limit: 50 })
    const h = await s.reply('h')
    const types = h.events.map((e) => e.type).filter((t) => t.startsWith('call.'))
    assert.deepEqual(types, ['call.started', 'call.participant.joined', 'call.participant.joined', 'call.participant.left', 'call.participant.left', 'call.ended'], JSON.stringify(h.events))
    const joined = h.events.filter((e) => e.type === 'call.participant.joined').map((e) => e.actor).sort()
    assert.deepEqual(joined, ['ada', 'bob'])
    s.close()
  })

  it('refuses bad signaling with a clear error and keeps the socket', async () => {
    const room = `bad-${Date.now()}`
    const s = raw(server, await token('ada'))
    await s.opened
    s.send({ t: 'call.join', id: 'c0', room })
    assert.equal((await s.reply('c0')).code, 'unknown_room', 'the room comes first')
    s.send({ t: 'join', id: 'j', room })
    await s.reply('j')
    s.send({ t: 'call.offer', id: 'o0', room, sdp: fakeOffer() })
    assert.equal((await s.reply('o0')).code, 'not_in_call')
    s.send({ t: 'call.join', id: 'c1', room })
    const joined = await s.reply('c1')
    assert.equal(joined.t, 'call.joined', JSON.stringify(joined))
    assert.match(joined.participant, /^p\d+$/)
    assert.deepEqual(joined.participants.map((p) => p.user), ['ada'])
    for (const [sdp, code] of [['', 'bad_request'], ['v=0\r\n', 'bad_request'], ['\u0000garbage', 'bad_request']]) {
      s.send({ t: 'call.offer', id: 'bad', room, sdp })
      const r = await s.reply('bad')
      assert.equal(r.code, code, JSON.stringify(r))
    }
    s.send({ t: 'call.offer', id: 'kind', room, sdp: fakeOffer(), publish: [{ mid: '1', kind: 'camera' }] })
    assert.match((await s.reply('kind')).message, /is audio, not camera/)
    s.send({ t: 'call.offer', id: 'nomid', room, sdp: fakeOffer(), publish: [{ mid: '7', kind: 'camera' }] })
    assert.equal((await s.reply('nomid')).code, 'bad_request')
    s.send({ t: 'call.offer', id: 'sub', room, sdp: fakeOffer(), subscribe: [{ mid: '0', track: 'p999-0' }] })
    assert.equal((await s.reply('sub')).code, 'bad_request', 'a sending m-line cannot subscribe')
    s.send({ t: 'track.subscribe', id: 'ts', room, track: 'p999-0', quality: 'low' })
    assert.equal((await s.reply('ts')).code, 'not_found')
    s.send({ t: 'track.publish', id: 'tp', room, mid: '0', kind: 'hologram' })
    assert.equal((await s.reply('tp')).code, 'bad_frame')
    s.send({ t: 'call.ice', id: 'ice', room, candidate: 'candidate:garbage' })
    assert.equal((await s.reply('ice')).code, 'bad_request')
    // A well-formed offer is answered, and the answer names the media socket.
    s.send({ t: 'call.offer', id: 'good', room, sdp: fakeOffer(), publish: [{ mid: '0', kind: 'camera' }, { mid: '1', kind: 'microphone' }] })
    const answer = await s.reply('good')
    assert.equal(answer.t, 'call.answer', JSON.stringify(answer))
    assert.match(answer.sdp, /a=candidate:\S+ 1 udp \d+ 127\.0\.0\.1 \d+ typ host/)
    assert.match(answer.sdp, /a=end-of-candidates/)
    // Garbage on the media port is dropped; the server answers signaling afterwards.
    const port = Number(answer.sdp.match(/127\.0\.0\.1 (\d+) typ host/)[1])
    const udp = dgram.createSocket('udp4')
    for (const junk of [Buffer.alloc(0), Buffer.from('garbage'), Buffer.alloc(1400, 0x80), Buffer.alloc(9000, 0x16)]) {
      await new Promise((resolve) => udp.send(junk, port, '127.0.0.1', resolve))
    }
    udp.close()
    s.send({ t: 'call.leave', id: 'l', room })
    assert.equal((await s.reply('l')).t, 'ok')
    s.send({ t: 'ping', id: 'p' })
    assert.equal((await s.reply('p')).t, 'pong')
    s.close()
  })

  it('read access watches and listens but cannot publish', async () => {
    const room = `watch-${Date.now()}`
    const s = raw(server, await token('rita', ['*=read']))
    await s.opened
    s.send({ t: 'join', id: 'j', room })
    await s.reply('j')
    s.send({ t: 'call.join', id: 'c', room })
    assert.equal((await s.reply('c')).t, 'call.joined')
    s.send({ t: 'call.offer', id: 'o', room, sdp: fakeOffer(), publish: [{ mid: '0', kind: 'camera' }] })
    assert.equal((await s.reply('o')).code, 'forbidden')
    s.send({ t: 'track.publish', id: 'tp', room, mid: '0', kind: 'camera' })
    assert.equal((await s.reply('tp')).code, 'forbidden')
    s.close()
  })

  it('a call interrupted by a crash is closed in the log by the next owner', async () => {
    const dataDir = makeDataDir()
    let crashy = await startAuthServer([], { dataDir })
    const listen = `127.0.0.1:${crashy.port}`
    const room = `crash-${Date.now()}`
    const history = async (srv) => {
      const s = raw(srv, await token('eve', ['*=read']))
      await s.opened
      s.send({ t: 'join', id: 'j', room })
      await s.reply('j')
      s.send({ t: 'history', id: 'h', room, limit: 50 })
      const h = await s.reply('h')
      s.close()
      return h.events.filter((e) => e.type.startsWith('call.'))
    }
    try {
      const s = raw(crashy, await token('ada'))
      await s.opened
      s.send({ t: 'join', id: 'j', room })
      await s.reply('j')
      s.send({ t: 'call.join', id: 'c', room })
      assert.equal((await s.reply('c')).t, 'call.joined')
      await waitFor(async () => (await history(crashy)).length === 2, 10_000, 'call.started and the join committed')
      await crashy.kill()
      crashy = await startAuthServer([], { dataDir, listen })
      const events = await waitFor(async () => {
        const e = await history(crashy)
        return e.length === 4 ? e : null
      }, 10_000, 'the interrupted call closed')
      assert.deepEqual(events.map((e) => e.type), ['call.started', 'call.participant.joined', 'call.participant.left', 'call.ended'])
      assert.equal(events[2].payload.reason, 'interrupted')
      assert.equal(events[2].actor, 'ada')
      assert.equal(events[3].payload.call, events[0].payload.call)
    } finally {
      await crashy.kill()
    }
  })
})
