// The client's own behaviour against a scripted server: a first join() that meets a moving room
// (`unavailable`, `shutting_down`) is retried with backoff; a refusal that will not change rejects at once.

import { describe, it, after } from 'node:test'
import assert from 'node:assert/strict'
import { WebSocketServer, WebSocket } from 'ws'
import { TandemClient } from '../dist/index.js'

/** A /v1 server that answers the first `refusals.length` joins with those error codes, then joins. */
async function scripted (refusals) {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0 })
  await new Promise((resolve) => wss.once('listening', resolve))
  const joins = []
  wss.on('connection', (ws) => {
    ws.send(JSON.stringify({ t: 'hello', v: 1, user: 'ada', limits: {} }))
    ws.on('message', (data) => {
      const m = JSON.parse(String(data))
      if (m.t !== 'join') return
      joins.push(Date.now())
      const code = refusals[joins.length - 1]
      if (code !== undefined) {
        ws.send(JSON.stringify({ t: 'error', id: m.id, code, message: `scripted ${code}`, room: m.room }))
      } else {
        ws.send(JSON.stringify({ t: 'joined', id: m.id, room: m.room, position: { epoch: 1, seq: 3 }, events: [], presence: [], typing: [] }))
      }
    })
  })
  return { url: `ws://127.0.0.1:${wss.address().port}/v1`, joins, close: () => wss.close() }
}

describe('@tandem/client join()', () => {
  const closers = []
  after(() => { for (const c of closers) c() })

  it('retries a join answered unavailable / shutting_down and resolves when the room is back', async () => {
    const srv = await scripted(['unavailable', 'shutting_down', 'unavailable'])
    closers.push(srv.close)
    const c = new TandemClient({ url: srv.url, token: 't', WebSocket })
    closers.push(() => c.close())
    const r = await c.room('team').join()
    assert.deepEqual(r.position, { epoch: 1, seq: 3 })
    assert.equal(srv.joins.length, 4, 'three refusals, then the join that succeeded')
    const gaps = srv.joins.slice(1).map((t, i) => t - srv.joins[i])
    assert.ok(gaps.every((g) => g >= 80), `backs off between attempts: ${gaps}`)
  })

  it('rejects at once on a refusal that retrying cannot change', async () => {
    const srv = await scripted(['forbidden'])
    closers.push(srv.close)
    const c = new TandemClient({ url: srv.url, token: 't', WebSocket })
    closers.push(() => c.close())
    await assert.rejects(c.room('team').join(), (e) => e.code === 'forbidden')
    assert.equal(srv.joins.length, 1)
  })
})
