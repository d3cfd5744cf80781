// Two headless Chromium pages (fake camera and microphone, a canvas as the screen) in one call through
// the real `tandem dev`, using @tandem/client's `room.call()`: each decodes the other's video, a
// screen share appears on the other side and goes away, leaving ends it.
//
// Needs Debian's chromium (/usr/bin/chromium, or $CHROMIUM): scripts/test installs it when missing,
// and the test fails without it. CALL_LOG=info,signaling=trace shows the SFU's decisions.

import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import http from 'node:http'
import { readFile } from 'node:fs/promises'
import { existsSync } from 'node:fs'
import { resolve, dirname, extname, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'
import { dumpLogsOnFailure } from './server.mjs'
import { startAuthServer, token, waitFor } from '../client/test/helpers.mjs'

const here = dirname(fileURLToPath(import.meta.url))
const web = resolve(here, '..')
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium'

const TYPES = { '.js': 'text/javascript', '.mjs': 'text/javascript', '.html': 'text/html', '.map': 'application/json' }

/** Serves the test page, the client's build and node_modules on 127.0.0.1 (a secure context). */
function staticServer () {
  const roots = { '/client/': resolve(web, 'client', 'dist'), '/nm/': resolve(web, 'node_modules'), '/': resolve(here, 'browser') }
  const server = http.createServer(async (req, res) => {
    const path = decodeURIComponent(new URL(req.url, 'http://x').pathname)
    const prefix = Object.keys(roots).find((p) => path.startsWith(p))
    const file = normalize(resolve(roots[prefix], '.' + path.slice(prefix.length - 1)))
    if (!file.startsWith(roots[prefix])) { res.writeHead(403).end(); return }
    try {
      const body = await readFile(file)
      res.writeHead(200, { 'content-type': TYPES[extname(file)] ?? 'application/octet-stream' }).end(body)
    } catch {
      res.writeHead(404).end()
    }
  })
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)))
}

describe('calls in a real browser', () => {
  let server, pages, browser
  before(async () => {
    assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM}: scripts/test installs Debian's chromium (or set CHROMIUM)`)
    server = await startAuthServer([], process.env.CALL_LOG ? { env: { RUST_LOG: process.env.CALL_LOG } } : {})
    pages = await staticServer()
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
        '--disable-sync', '--use-fake-device-for-media-stream', '--use-fake-ui-for-media-stream',
        '--allow-loopback-in-peer-connection', '--disable-features=WebRtcHideLocalIpsWithMdns']
    })
  })
  after(async () => {
    await browser?.close()
    pages?.close()
    await server?.stop()
  })
  dumpLogsOnFailure(afterEach, () => [server])

  async function open (user, room) {
    const context = await browser.newContext({ permissions: ['camera', 'microphone'] })
    const page = await context.newPage()
    const logs = []
    page.on('console', (m) => logs.push(`[${user}] ${m.type()}: ${m.text()}`))
    page.on('pageerror', (e) => logs.push(`[${user}] pageerror: ${e.message}`))
    await page.goto(`http://127.0.0.1:${pages.address().port}/call.html`)
    await page.waitForFunction(() => window.tandem?.start !== undefined)
    const participant = await page.evaluate(([url, tok, r]) => window.tandem.start(url, tok, r), [server.url + '/v1', await token(user), room])
    return { page, context, logs, participant }
  }

  async function decodedFrom (p, predicate) {
    const decoded = await p.page.evaluate(() => window.tandem.decoded())
    const tracks = await p.page.evaluate(() => window.tandem.state.tracks)
    return Object.entries(decoded).filter(([id]) => predicate(tracks[id] ?? {})).map(([, n]) => n)
  }

  it('two pages see each other\'s camera and a screen share; leaving ends it', async () => {
    const room = `browser-${Date.now()}`
    const ada = await open('ada', room)
    const bob = await open('bob', room)
    const report = async () => JSON.stringify({
      ada: await ada.page.evaluate(async () => ({ inbound: await window.tandem.inbound(), tracks: window.tandem.state.tracks, errors: window.tandem.state.errors })),
      bob: await bob.page.evaluate(async () => ({ inbound: await window.tandem.inbound(), tracks: window.tandem.state.tracks, errors: window.tandem.state.errors })),
      logs: [...ada.logs, ...bob.logs].slice(-40)
    }).slice(0, 6000)
    try {
      await waitFor(async () => (await decodedFrom(ada, (t) => t.user === 'bob' && t.kind === 'camera')).some((n) => n > 10), 30_000,
        'ada decodes bob\'s camera')
      await waitFor(async () => (await decodedFrom(bob, (t) => t.user === 'ada' && t.kind === 'camera')).some((n) => n > 10), 30_000,
        'bob decodes ada\'s camera')
      // Ada shares her screen: Bob receives and decodes it.
      await ada.page.evaluate(() => window.tandem.shareScreen())
      await waitFor(async () => (await decodedFrom(bob, (t) => t.user === 'ada' && t.kind === 'screen')).some((n) => n > 5), 30_000,
        'bob decodes ada\'s screen share')
      await ada.page.evaluate(() => window.tandem.stopScreen())
      await waitFor(() => bob.page.evaluate(() => window.tandem.state.events.some(([e, v]) => e === 'track.unpublished' && v.kind === 'screen')), 10_000,
        'bob sees the screen share end')
      // Ada leaves: Bob is told, with her tracks gone.
      await ada.page.evaluate(() => window.tandem.leave())
      await waitFor(() => bob.page.evaluate(() => window.tandem.state.events.some(([e, v]) => e === 'participant.left' && v.user === 'ada')), 10_000,
        'bob sees ada leave')
      const errors = await bob.page.evaluate(() => window.tandem.state.errors)
      assert.deepEqual(errors, [])
    } catch (e) {
      e.message += '\n' + await report()
      throw e
    } finally {
      await ada.context.close()
      await bob.context.close()
    }
  })
})
