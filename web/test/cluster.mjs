// Starts a real cluster for the integration tests: N `tandem shard` and M `tandem gateway` processes
// on the shared PostgreSQL and Redis, under a unique cluster name.
//
//   const c = await startCluster({ shards: 3, gateways: 2, gatewayArgs: [...] })
//   c.gateways[i].url        -> 'ws://127.0.0.1:PORT'
//   await c.ctl('doc', 'locate', 'notes')   // stdout of `tandem ctl … doc locate notes`
//   await c.killShard('s1'); await c.startShard('s1')
//   await c.stop()

import { spawn, execFile } from 'node:child_process'
import { createServer } from 'node:net'
import { TANDEM_BIN } from './server.mjs'

export const DATABASE_URL = process.env.TANDEM_TEST_DATABASE_URL ?? 'postgres://root@127.0.0.1:5432/test'
export const REDIS_URL = process.env.TANDEM_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

const live = new Set()
process.on('exit', () => { for (const p of live) { try { p.kill('SIGKILL') } catch {} } })

function freePort () {
  return new Promise((resolve, reject) => {
    const s = createServer()
    s.once('error', reject)
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => resolve(p)) })
  })
}

function run (args, name, logs, waitFor) {
  const proc = spawn(TANDEM_BIN, args, { env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' }, stdio: ['ignore', 'pipe', 'pipe'] })
  live.add(proc)
  const out = []
  proc.stdout.on('data', (d) => out.push(d.toString()))
  proc.stderr.on('data', (d) => out.push(d.toString()))
  proc.once('exit', () => live.delete(proc))
  logs.push(() => `--- ${name} (pid ${proc.pid}) ---\n${out.join('')}`)
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })))
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${name} did not start:\n${out.join('')}`)), 60_000)
    const check = () => { if (out.join('').includes(waitFor)) { clearTimeout(timer); resolve() } }
    proc.stdout.on('data', check)
    proc.once('exit', () => { clearTimeout(timer); reject(new Error(`${name} exited:\n${out.join('')}`)) })
  })
  return { proc, ready, exited }
}

export async function startCluster ({ shards = 3, gateways = 2, gatewayArgs = [], shardArgs = [] } = {}) {
  const cluster = `node-${process.pid}-${Date.now()}`
  const logs = []
  const common = ['--database-url', DATABASE_URL, '--redis-url', REDIS_URL, '--cluster', cluster]
  const shardProcs = new Map()
  const specs = new Map()
  const c = {
    cluster,
    gateways: [],
    logs: () => logs.map((f) => f()).join('\n'),
    async startShard (id) {
      const spec = specs.get(id)
      const p = run(['shard', '--id', id, '--link-listen', `127.0.0.1:${spec.link}`, '--admin-listen', `127.0.0.1:${spec.admin}`, ...common, ...shardArgs], id, logs, 'tandem shard')
      shardProcs.set(id, p)
      await p.ready
    },
    async killShard (id) {
      const p = shardProcs.get(id)
      p.proc.kill('SIGKILL')
      await p.exited
    },
    shardExited (id) { return shardProcs.get(id).exited },
    ctl (...args) {
      return new Promise((resolve, reject) => {
        execFile(TANDEM_BIN, ['ctl', '--redis-url', REDIS_URL, '--cluster', cluster, ...args], (err, stdout, stderr) => {
          if (err) reject(new Error(`tandem ctl ${args.join(' ')}: ${stderr}`))
          else resolve(stdout)
        })
      })
    },
    /** The shard that owns `kind:id` on the current ring (`tandem ctl doc|room locate`). */
    async owner (kind, id) {
      const out = await c.ctl(kind, 'locate', id)
      return /owner (\S+)/.exec(out)[1]
    },
    async stop () {
      for (const g of c.gateways) { g.proc.kill('SIGKILL'); await g.exited }
      for (const p of shardProcs.values()) {
        if (p.proc.exitCode === null && p.proc.signalCode === null) { p.proc.kill('SIGKILL'); await p.exited }
      }
    }
  }
  for (let i = 0; i < shards; i++) {
    specs.set(`s${i}`, { link: await freePort(), admin: await freePort() })
    await c.startShard(`s${i}`)
  }
  for (let i = 0; i < gateways; i++) {
    const port = await freePort()
    const g = run(['gateway', '--listen', `127.0.0.1:${port}`, '--redis-url', REDIS_URL, '--cluster', cluster, ...gatewayArgs], `gateway${i}`, logs, 'tandem gateway')
    await g.ready
    c.gateways.push({ ...g, port, url: `ws://127.0.0.1:${port}` })
  }
  // Every gateway sees every shard.
  const deadline = Date.now() + 20_000
  for (;;) {
    const out = await c.ctl('shards', 'list')
    if ((out.match(/serving/g) ?? []).length === shards) break
    if (Date.now() > deadline) throw new Error('the ring never filled:\n' + out)
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  await new Promise((resolve) => setTimeout(resolve, 500))
  return c
}
