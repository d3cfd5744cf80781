// Resume after reconnect across server restarts and crashes: exactly the missed events, or a reset when
// they are no longer in the room's window; ghosts of a crashed server's connections leave after the
// grace period; the TypeScript client reconnects by itself.

import { describe, it, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { dumpLogsOnFailure, makeDataDir } from '../../test/server.mjs'
import { startAuthServer, token, client, collect, waitFor, sleep } from './helpers.mjs'

describe('/v1 resume and failover', () => {
  const servers = []
  const open = []
  after(async () => {
    for (const c of open) c.close()
    for (const s of servers) await s.kill()
  })
  dumpLogsOnFailure(afterEach, () => servers)

  async function start (args, dataDir, listen) {
    const s = await startAuthServer(args, { dataDir, listen })
    servers.push(s)
    return s
  }

  async function tab (server, sub) {
    const c = await client(server, await token(sub))
    open.push(c)
    return c
  }

  it('resumes exactly the missed messages after a graceful restart', async () => {
    const dataDir = makeDataDir()
    let server = await start([], dataDir)
    const listen = `127.0.0.1:${server.port}`
    const ada = await tab(server, 'ada')
    const bob = await tab(server, 'bob')
    const ra = ada.room('standup')
    const rb = bob.room('standup')
    const lb = collect(rb)
    let resets = 0
    rb.on('reset', () => { resets += 1 })
    await ra.join()
    await rb.join()
    await ra.send('before')
    await waitFor(() => lb.texts().length === 1, 5000, 'bob got the first message')
    bob.goOffline()
    await sleep(100)
    await ra.send('missed 1')
    await ra.send('missed 2')
    assert.equal(await server.stop(), 0)
    server = await start([], dataDir, listen)
    // ada's client reconnects by itself; what she sends now is the third missed message.
    await waitFor(() => ada.isConnected, 10_000, 'ada reconnected')
    await ra.send('missed 3 (after the restart)')
    bob.goOnline()
    await waitFor(() => lb.texts().length === 4, 10_000, () => `bob caught up: ${JSON.stringify(lb.texts())}`)
    await sleep(200)
    assert.deepEqual(lb.texts(), ['before', 'missed 1', 'missed 2', 'missed 3 (after the restart)'])
    assert.equal(resets, 0, 'the position survived the restart')
    const seqs = lb.seqs()
    assert.equal(new Set(seqs).size, seqs.length, 'no duplicates')
    ada.close()
    bob.close()
  })

  it('is told to reload when the missed events left the window', async () => {
    const server = await start(['--history-window', '5'])
    const ada = await tab(server, 'ada')
    const bob = await tab(server, 'bob')
    const ra = ada.room('busy')
    const rb = bob.room('busy')
    await ra.join()
    await rb.join()
    await ra.send('seen')
    await waitFor(() => rb.position?.seq >= 3, 5000, 'bob saw the message')
    const resets = []
    rb.on('reset', (r) => resets.push(r))
    bob.goOffline()
    await sleep(100)
    for (let i = 0; i < 10; i++) await ra.send(`flood ${i}`)
    bob.goOnline()
    await waitFor(() => resets.length === 1, 10_000, 'reset')
    assert.equal(resets[0].reason, 'too_old')
    // The client starts again from the room's position and reloads what it wants from history.
    const page = await rb.history({ limit: 10 })
    const texts = page.filter((e) => e.type === 'chat.message.sent').map((e) => e.payload.text)
    assert.deepEqual(texts.slice(-3), ['flood 7', 'flood 8', 'flood 9'])
    // bob's own return (user.joined) is the newest event, and live events continue from the position.
    const lastEvent = page[page.length - 1]
    assert.deepEqual([lastEvent.type, lastEvent.payload.user], ['user.joined', 'bob'])
    await waitFor(() => rb.position.seq === lastEvent.seq, 5000, 'position at the newest event')
    ada.close()
    bob.close()
  })

  it('after a crash, users who do not come back leave after the grace period; others do not rejoin twice', async () => {
    const dataDir = makeDataDir()
    let server = await start(['--presence-grace-secs', '1'], dataDir)
    const listen = `127.0.0.1:${server.port}`
    const ada = await tab(server, 'ada')
    const bob = await tab(server, 'bob')
    const ra = ada.room('crash')
    const la = collect(ra)
    await ra.join()
    await bob.room('crash').join()
    await waitFor(() => ra.presence.size === 2, 5000, 'both present')
    await server.kill() // SIGKILL: nobody's user.left is written
    bob.close() // bob never comes back
    server = await start(['--presence-grace-secs', '1'], dataDir, listen)
    await waitFor(() => ada.isConnected && ra.presence.size === 1, 10_000, 'ada back, alone')
    await waitFor(() => la.events.some((e) => e.type === 'user.left' && e.payload.user === 'bob'), 10_000, 'bob announced as left')
    const joins = la.events.filter((e) => e.type === 'user.joined' && e.payload.user === 'ada')
    assert.equal(joins.length, 1, 'ada was already present in the log: no second user.joined')
    const hist = await ra.history({ limit: 100 })
    const presenceEvents = hist.filter((e) => e.type.startsWith('user.')).map((e) => `${e.type} ${e.payload.user}`)
    assert.deepEqual(presenceEvents, ['user.joined ada', 'user.joined bob', 'user.left bob'])
    ada.close()
  })
})
