// A real cluster (3 shards, 2 gateways, PostgreSQL + Redis): stock y-websocket providers and the
// TypeScript client carry on when the owner of their document or room is killed or drained.
import { describe, it, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { startCluster } from './cluster.mjs'
import { mintToken } from './server.mjs'
import { Y, makeProvider, waitSynced, waitFor, sleep } from './util.mjs'
import { TandemClient } from '@tandem/client'
import WebSocket from 'ws'

const SECRET = 'cluster-tests-secret-0123456789'
const sv = (doc) => Buffer.from(Y.encodeStateVector(doc)).toString('hex')

describe('cluster', () => {
  let cluster
  const providers = []
  after(async () => {
    // Destroying the docs too: a Y.Doc's awareness keeps an interval timer until its doc is destroyed.
    for (const { doc, p } of providers) {
      try { p.destroy() } catch {}
      try { doc.destroy() } catch {}
    }
    if (cluster) await cluster.stop()
  })
  afterEach((t) => { if (t.passed === false && cluster) console.error(cluster.logs().slice(-20_000)) })

  async function provider (gateway, docId, sub) {
    const token = await mintToken({ secret: SECRET, sub, grants: ['*=write'] })
    const doc = new Y.Doc()
    const p = makeProvider(gateway.url, docId, doc, { params: { token } })
    providers.push({ doc, p })
    return { doc, p }
  }

  it('starts', async () => {
    cluster = await startCluster({ gatewayArgs: ['--jwt-hs256-secret', SECRET] })
  })

  it('stock y-websocket providers reconnect by themselves when the owner is killed, and lose nothing', async () => {
    const docId = `kill-${Date.now()}`
    const a = await provider(cluster.gateways[0], docId, 'ada')
    const b = await provider(cluster.gateways[1], docId, 'bob')
    await waitSynced(a.p)
    await waitSynced(b.p)
    const owner = await cluster.owner('doc', docId)
    const la = a.doc.getArray('log')
    const lb = b.doc.getArray('log')
    la.push(['a-before'])
    lb.push(['b-before'])
    await waitFor(() => sv(a.doc) === sv(b.doc) && la.length === 2, 10_000, { message: 'converged before the kill' })
    await cluster.killShard(owner)
    // Editing through the outage: these are sent once the providers are connected again.
    for (let i = 0; i < 5; i++) {
      la.push([`a-during-${i}`])
      lb.push([`b-during-${i}`])
      await sleep(200)
    }
    const newOwner = await (async () => {
      for (let i = 0; i < 100; i++) {
        const o = await cluster.owner('doc', docId)
        if (o !== owner) return o
        await sleep(100)
      }
      throw new Error('the ring kept the dead shard')
    })()
    assert.notEqual(newOwner, owner)
    la.push(['a-after'])
    await waitFor(() => sv(a.doc) === sv(b.doc) && la.length === 13, 15_000, {
      message: () => `did not converge: a=${JSON.stringify(la.toArray())} b=${JSON.stringify(lb.toArray())}`
    })
    // A fresh client, through either gateway, loads all of it from the new owner.
    const fresh = await provider(cluster.gateways[1], docId, 'cy')
    await waitSynced(fresh.p)
    await waitFor(() => fresh.doc.getArray('log').length === 13, 10_000)
    assert.deepEqual(fresh.doc.getArray('log').toArray().sort(), la.toArray().sort())
    await cluster.startShard(owner)
  })

  it('a drained shard hands its documents over live: providers move and converge', async () => {
    const docId = `drain-${Date.now()}`
    const a = await provider(cluster.gateways[0], docId, 'ada')
    const b = await provider(cluster.gateways[1], docId, 'bob')
    await waitSynced(a.p)
    await waitSynced(b.p)
    await sleep(300)
    const owner = await cluster.owner('doc', docId)
    const plan = JSON.parse(await cluster.ctl('ring', 'plan', '--remove', owner, '--json'))
    const planned = plan.moves.find((m) => m.key === `doc:${docId}`)
    assert.ok(planned, `the plan moves the document: ${JSON.stringify(plan)}`)
    const la = a.doc.getArray('log')
    la.push(['before'])
    const drained = cluster.ctl('shard', 'drain', owner)
    for (let i = 0; i < 5; i++) { b.doc.getArray('log').push([`during-${i}`]); await sleep(100) }
    const out = await drained
    assert.match(out, /drained and exited/)
    await cluster.shardExited(owner)
    la.push(['after'])
    await waitFor(() => sv(a.doc) === sv(b.doc) && la.length === 7, 15_000, {
      message: () => `did not converge: a=${JSON.stringify(la.toArray())} b=${JSON.stringify(b.doc.getArray('log').toArray())}`
    })
    const located = await cluster.ctl('doc', 'locate', docId)
    assert.match(located, new RegExp(`loaded on ${planned.to}`), located)
    await cluster.startShard(owner)
  })

  it('@tandem/client: chat carries on when the room owner is killed; every message once, in order', async () => {
    const room = `standup-${Date.now()}`
    const tok = (sub) => mintToken({ secret: SECRET, sub, grants: ['*=write'], extra: ['--room-grant', '*=write'] })
    const mk = async (g, sub) => new TandemClient({ url: g.url + '/v1', token: await tok(sub), WebSocket, minReconnectMs: 50, maxReconnectMs: 500 })
    const ada = await mk(cluster.gateways[0], 'ada')
    const bob = await mk(cluster.gateways[1], 'bob')
    try {
      const ra = ada.room(room)
      const rb = bob.room(room)
      const seen = []
      rb.on('message', (m) => seen.push(m))
      await ra.join()
      await rb.join()
      await ra.send('one')
      await waitFor(() => seen.length === 1, 5000, { message: 'bob got the first message' })
      const owner = await cluster.owner('room', room)
      await cluster.killShard(owner)
      // Sent into the outage: queued by the client, re-sent with the same ids, acknowledged once.
      const sends = [ra.send('two'), ra.send('three')]
      await Promise.all(sends)
      await ra.send('four')
      await waitFor(() => seen.length >= 4, 15_000, { message: () => `bob saw ${JSON.stringify(seen.map((m) => m.payload.text))}` })
      await sleep(300)
      assert.deepEqual(seen.map((m) => m.payload.text), ['one', 'two', 'three', 'four'])
      const seqs = seen.map((m) => m.seq)
      assert.deepEqual([...seqs].sort((x, y) => x - y), seqs, 'in seq order')
      const history = await rb.history({ limit: 50 })
      const texts = history.filter((e) => e.type === 'chat.message.sent').map((e) => e.payload.text)
      assert.deepEqual(texts, ['one', 'two', 'three', 'four'], 'each message committed once')
      await cluster.startShard(owner)
    } finally {
      ada.close()
      bob.close()
    }
  })
})
