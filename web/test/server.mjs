// Spawns the real `tandem` binary for the integration tests.
//
//   const srv = await startServer({ args: ['--max-message-bytes', '65536'] })
//   srv.url      -> 'ws://127.0.0.1:PORT'   (provider serverUrl is srv.url + '/doc')
//   srv.httpUrl  -> 'http://127.0.0.1:PORT'
//   await srv.stop()   // SIGINT, waits for exit, returns the exit code
//   await srv.kill()   // SIGKILL, waits for exit
//
// The binary is $TANDEM_BIN or <repo>/target/debug/tandem.

import { spawn, execFile } from 'node:child_process'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, resolve, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const here = dirname(fileURLToPath(import.meta.url))

export const TANDEM_BIN = process.env.TANDEM_BIN
  ? resolve(process.env.TANDEM_BIN)
  : resolve(here, '..', '..', 'target', 'debug', 'tandem')

const LISTEN_RE = /listening on http:\/\/([^\s:]+):(\d+)/
const START_TIMEOUT_MS = 60_000
const STOP_TIMEOUT_MS = 30_000

/** every server started by this process that has not exited yet */
const live = new Set()
/** temp dirs created by makeDataDir(), removed when the process exits */
const tempDirs = new Set()

process.on('exit', () => {
  for (const s of live) {
    try { s.proc.kill('SIGKILL') } catch {}
  }
  for (const d of tempDirs) {
    try { rmSync(d, { recursive: true, force: true }) } catch {}
  }
})

/** A fresh temporary --data directory (removed when the test process exits). */
export function makeDataDir (prefix = 'tandem-test-') {
  const dir = mkdtempSync(join(tmpdir(), prefix))
  tempDirs.add(dir)
  return dir
}

/**
 * Start `tandem dev --listen 127.0.0.1:0 --data DIR --shards 2 ...args`.
 * @param {{ args?: string[], env?: Record<string,string>, dataDir?: string, name?: string, listen?: string }} [opts]
 */
export async function startServer (opts = {}) {
  const dataDir = opts.dataDir ?? makeDataDir()
  const args = ['dev', '--listen', opts.listen ?? '127.0.0.1:0', '--data', dataDir, '--shards', '2', ...(opts.args ?? [])]
  const env = { ...process.env, RUST_LOG: 'info', NO_COLOR: '1', ...(opts.env ?? {}) }
  const proc = spawn(TANDEM_BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] })
  const name = opts.name ?? 'tandem'
  const stdoutChunks = []
  const stderrChunks = []
  const exited = new Promise((resolve) => {
    proc.once('exit', (code, signal) => resolve({ code, signal }))
  })
  const server = {
    proc,
    dataDir,
    args,
    name,
    url: '',
    httpUrl: '',
    port: 0,
    host: '',
    logs: () => `--- ${name} ${args.join(' ')} (pid ${proc.pid}) ---\n` +
      '[stdout]\n' + stdoutChunks.join('') + '\n[stderr]\n' + stderrChunks.join(''),
    exited,
    /** SIGINT (or another signal), wait for exit, return the exit code. */
    async stop (signal = 'SIGINT') {
      if (proc.exitCode !== null || proc.signalCode !== null) return proc.exitCode
      proc.kill(signal)
      let timer
      const timeout = new Promise((_resolve, reject) => {
        timer = setTimeout(() => reject(new Error(`${name} did not exit within ${STOP_TIMEOUT_MS} ms after ${signal}`)), STOP_TIMEOUT_MS)
      })
      try {
        const { code } = await Promise.race([exited, timeout])
        return code
      } catch (e) {
        proc.kill('SIGKILL')
        await exited
        throw e
      } finally {
        clearTimeout(timer)
      }
    },
    /** SIGKILL and wait for exit. */
    async kill () {
      if (proc.exitCode !== null || proc.signalCode !== null) return
      proc.kill('SIGKILL')
      await exited
    },
    isAlive: () => proc.exitCode === null && proc.signalCode === null
  }
  live.add(server)
  exited.then(() => live.delete(server))

  proc.stderr.setEncoding('utf8')
  proc.stderr.on('data', (d) => stderrChunks.push(d))
  proc.stdout.setEncoding('utf8')

  await new Promise((resolve, reject) => {
    let buf = ''
    const timer = setTimeout(() => {
      cleanup()
      proc.kill('SIGKILL')
      reject(new Error(`${name} did not print its listening line within ${START_TIMEOUT_MS} ms\n${server.logs()}`))
    }, START_TIMEOUT_MS)
    const onData = (d) => {
      stdoutChunks.push(d)
      buf += d
      const m = LISTEN_RE.exec(buf)
      if (m) {
        cleanup()
        server.host = m[1]
        server.port = Number(m[2])
        server.url = `ws://${m[1]}:${m[2]}`
        server.httpUrl = `http://${m[1]}:${m[2]}`
        // keep collecting stdout for the logs
        proc.stdout.on('data', (x) => stdoutChunks.push(x))
        resolve()
      }
    }
    const onExit = (code, signal) => {
      cleanup()
      reject(new Error(`${name} exited (code ${code}, signal ${signal}) before listening\n${server.logs()}`))
    }
    const onError = (err) => {
      cleanup()
      reject(new Error(`cannot spawn ${TANDEM_BIN}: ${err.message}`))
    }
    function cleanup () {
      clearTimeout(timer)
      proc.stdout.off('data', onData)
      proc.off('exit', onExit)
      proc.off('error', onError)
    }
    proc.stdout.on('data', onData)
    proc.once('exit', onExit)
    proc.once('error', onError)
  })
  return server
}

/** Print the logs of every server that is still tracked (call from afterEach when !t.passed). */
export function printLogs (servers) {
  for (const s of servers) {
    if (s) process.stderr.write('\n' + s.logs() + '\n')
  }
}

/**
 * Register an afterEach hook (inside a describe) that prints the logs of the
 * servers returned by getServers() when a test failed.
 */
export function dumpLogsOnFailure (afterEach, getServers) {
  afterEach((t) => {
    if (t.passed === false) printLogs(getServers())
  })
}

/**
 * Run the same binary's `tandem token` subcommand and return the JWT it prints.
 * @param {{ secret: string, sub: string, grants: string[], ttl?: number, extra?: string[] }} o
 */
export function mintToken ({ secret, sub, grants, ttl, extra = [] }) {
  const args = ['token', '--secret', secret, '--sub', sub]
  for (const g of grants) args.push('--grant', g)
  if (ttl !== undefined) args.push('--ttl', String(ttl))
  args.push(...extra)
  return new Promise((resolve, reject) => {
    execFile(TANDEM_BIN, args, { timeout: 30_000, env: { ...process.env, RUST_LOG: 'warn' } }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`tandem ${args.join(' ')} failed: ${err.message}\n${stderr}`))
        return
      }
      const token = stdout.trim().split('\n').pop().trim()
      if (!/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/.test(token)) {
        reject(new Error(`tandem token printed something that is not a JWT: ${JSON.stringify(stdout)}`))
        return
      }
      resolve(token)
    })
  })
}
