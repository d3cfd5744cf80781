// Auth: JWT (HS256) via ?token= or Sec-WebSocket-Protocol, per-doc grants,
// read-only clients, expired / wrong-audience tokens, Origin allow-list.
import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import * as authProtocol from 'y-protocols/auth'
import { startServer, makeDataDir, mintToken, dumpLogsOnFailure } from './server.mjs'
import {
  Y, makeProvider, connectedClient, destroyAll, waitFor, waitSynced, sleep, openRaw, tryUpgrade,
  updateMessage, decodeMessage, signJwt, decodeJwt, stateVector, MSG_AUTH
} from './util.mjs'

const SECRET = 'tandem-test-secret-0123456789abcdef'

/** Re-sign `token`'s payload after applying `change` (and optionally a different header/secret). */
function resign (token, change = (p) => p, { secret = SECRET, header } = {}) {
  const { header: h, payload } = decodeJwt(token)
  return signJwt(change({ ...payload }), secret, header ?? h)
}

/** Provider that records permission-denied auth messages instead of printing them. */
function recordDenials (provider) {
  const denials = []
  provider.messageHandlers[MSG_AUTH] = (_encoder, decoder, p) => {
    authProtocol.readAuthMessage(decoder, p.doc, (_doc, reason) => denials.push({ reason, at: Date.now() }))
  }
  return denials
}

describe('auth (JWT)', () => {
  let server
  const dataDir = makeDataDir()
  const clients = []
  const raws = []
  const tokens = {}

  dumpLogsOnFailure(afterEach, () => [server])

  before(async () => {
    server = await startServer({ name: 'auth', dataDir, args: ['--jwt-hs256-secret', SECRET] })
    tokens.all = await mintToken({ secret: SECRET, sub: 'alice', grants: ['*=write'] })
    tokens.notesWrite = await mintToken({ secret: SECRET, sub: 'bob', grants: ['notes-*=write'] })
    tokens.notesRead = await mintToken({ secret: SECRET, sub: 'carol', grants: ['notes-*=read'] })
    tokens.admin = await mintToken({ secret: SECRET, sub: 'root', grants: ['*=admin'] })
    tokens.multi = await mintToken({ secret: SECRET, sub: 'dave', grants: ['other-*=write', 'notes-*=read'], ttl: 3600 })
  })

  after(async () => {
    destroyAll(clients)
    for (const r of raws) r.terminate()
    if (server) assert.equal(await server.stop(), 0, 'server exit code after SIGINT')
  })

  it('`tandem token` prints an HS256 JWT with aud/iss tandem, sub and exp', () => {
    const { header, payload } = decodeJwt(tokens.multi)
    assert.equal(header.alg, 'HS256')
    assert.equal(payload.sub, 'dave')
    const aud = Array.isArray(payload.aud) ? payload.aud : [payload.aud]
    assert.ok(aud.includes('tandem'), `aud ${JSON.stringify(payload.aud)}`)
    assert.equal(payload.iss, 'tandem')
    assert.equal(typeof payload.exp, 'number')
    const now = Math.floor(Date.now() / 1000)
    assert.ok(payload.exp > now + 3000 && payload.exp <= now + 3700, `exp ${payload.exp} for --ttl 3600 (now ${now})`)
  })

  it('an upgrade without a token is refused with HTTP 401', async () => {
    const r = await tryUpgrade(server.url, 'notes-1')
    assert.deepEqual([r.opened, r.status], [false, 401], JSON.stringify(r))
  })

  it('garbage, wrongly signed and alg=none tokens are refused with HTTP 401', async () => {
    const cases = {
      garbage: 'not-a-jwt',
      emptyToken: '',
      wrongSecret: resign(tokens.all, undefined, { secret: 'some-other-secret' }),
      algNone: (() => {
        const { payload } = decodeJwt(tokens.all)
        return Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url') + '.' +
          Buffer.from(JSON.stringify(payload)).toString('base64url') + '.'
      })(),
      tamperedPayload: (() => {
        // notes-* read token, payload swapped for the '*=write' one, old signature kept
        const [h, , s] = tokens.notesRead.split('.')
        return `${h}.${tokens.all.split('.')[1]}.${s}`
      })()
    }
    for (const [name, token] of Object.entries(cases)) {
      const r = await tryUpgrade(server.url, 'notes-1?token=' + encodeURIComponent(token))
      assert.deepEqual([r.opened, r.status], [false, 401], `${name}: ${JSON.stringify(r)}`)
    }
  })

  it('my own HS256 signing matches the server (control for the hand-made tokens below)', async () => {
    const same = resign(tokens.all)
    const r = await tryUpgrade(server.url, 'notes-1?token=' + same)
    assert.equal(r.opened, true, `re-signed identical token refused: ${JSON.stringify(r)}`)
  })

  it('an expired token is refused with HTTP 401', async () => {
    const now = Math.floor(Date.now() / 1000)
    const expired = resign(tokens.all, (p) => ({ ...p, iat: now - 7200, nbf: now - 7200, exp: now - 3600 }))
    const r = await tryUpgrade(server.url, 'notes-1?token=' + expired)
    assert.deepEqual([r.opened, r.status], [false, 401], JSON.stringify(r))
  })

  it('a token not yet valid (nbf in the future) is refused with HTTP 401', async () => {
    const now = Math.floor(Date.now() / 1000)
    const early = resign(tokens.all, (p) => ({ ...p, nbf: now + 3600, exp: now + 7200 }))
    const r = await tryUpgrade(server.url, 'notes-1?token=' + early)
    assert.deepEqual([r.opened, r.status], [false, 401], JSON.stringify(r))
  })

  it('a token for another audience or issuer is refused with HTTP 401', async () => {
    const wrongAud = resign(tokens.all, (p) => ({ ...p, aud: 'someone-else' }))
    let r = await tryUpgrade(server.url, 'notes-1?token=' + wrongAud)
    assert.deepEqual([r.opened, r.status], [false, 401], `wrong aud: ${JSON.stringify(r)}`)
    const noAud = resign(tokens.all, (p) => { delete p.aud; return p })
    r = await tryUpgrade(server.url, 'notes-1?token=' + noAud)
    assert.deepEqual([r.opened, r.status], [false, 401], `missing aud: ${JSON.stringify(r)}`)
    const wrongIss = resign(tokens.all, (p) => ({ ...p, iss: 'evil' }))
    r = await tryUpgrade(server.url, 'notes-1?token=' + wrongIss)
    assert.deepEqual([r.opened, r.status], [false, 401], `wrong iss: ${JSON.stringify(r)}`)
  })

  it('a valid token whose grants do not match the doc is refused with HTTP 403', async () => {
    let r = await tryUpgrade(server.url, 'secret-doc?token=' + tokens.notesWrite)
    assert.deepEqual([r.opened, r.status], [false, 403], `notes-* on secret-doc: ${JSON.stringify(r)}`)
    r = await tryUpgrade(server.url, 'notes?token=' + tokens.notesWrite)
    assert.deepEqual([r.opened, r.status], [false, 403], `notes-* on "notes": ${JSON.stringify(r)}`)
    r = await tryUpgrade(server.url, 'xnotes-1?token=' + tokens.notesRead)
    assert.deepEqual([r.opened, r.status], [false, 403], `notes-* on xnotes-1: ${JSON.stringify(r)}`)
    // and the matching ones are accepted
    r = await tryUpgrade(server.url, 'notes-42?token=' + tokens.notesWrite)
    assert.equal(r.opened, true, `notes-* on notes-42: ${JSON.stringify(r)}`)
    r = await tryUpgrade(server.url, 'anything.at:all?token=' + tokens.all)
    assert.equal(r.opened, true, `* on anything.at:all: ${JSON.stringify(r)}`)
  })

  it('providers with ?token= (params) sync and exchange edits', async () => {
    const a = await connectedClient(server.url, 'notes-shared', { params: { token: tokens.notesWrite } })
    const b = await connectedClient(server.url, 'notes-shared', { params: { token: tokens.admin } })
    clients.push(a, b)
    a.doc.getText('t').insert(0, 'from bob')
    await waitFor(() => b.doc.getText('t').toString() === 'from bob', 10_000)
    b.doc.getMap('m').set('root', true)
    await waitFor(() => a.doc.getMap('m').get('root') === true, 10_000)
  })

  it('a token in Sec-WebSocket-Protocol is accepted (provider `protocols`)', async () => {
    const raw = await tryUpgrade(server.url, 'notes-proto', { protocols: [tokens.notesWrite] })
    assert.equal(raw.opened, true, `raw upgrade with the token as subprotocol: ${JSON.stringify(raw)}`)

    // the token may be any one of several entries
    const multi = await tryUpgrade(server.url, 'notes-proto', { protocols: ['y-websocket', tokens.notesWrite] })
    assert.equal(multi.opened, true, `token as the 2nd of 2 subprotocols: ${JSON.stringify(multi)}`)

    const a = await connectedClient(server.url, 'notes-proto', { protocols: [tokens.notesWrite] })
    const b = await connectedClient(server.url, 'notes-proto', { params: { token: tokens.all } })
    clients.push(a, b)
    a.doc.getText('t').insert(0, 'via subprotocol')
    await waitFor(() => b.doc.getText('t').toString() === 'via subprotocol', 10_000)

    // a bad token in the subprotocol is still a 401
    const bad = await tryUpgrade(server.url, 'notes-proto', { protocols: [resign(tokens.notesWrite, undefined, { secret: 'nope' })] })
    assert.deepEqual([bad.opened, bad.status], [false, 401], JSON.stringify(bad))
  })

  it('a read-only client syncs and receives updates, but its edits are refused with permission-denied', async () => {
    const docId = 'notes-readonly'
    const writer = await connectedClient(server.url, docId, { params: { token: tokens.notesWrite } })
    clients.push(writer)
    writer.doc.getText('t').insert(0, 'written before the reader joined. ')
    await sleep(200)

    const rdoc = new Y.Doc()
    const reader = makeProvider(server.url, docId, rdoc, { params: { token: tokens.notesRead } })
    const denials = recordDenials(reader)
    clients.push({ doc: rdoc, provider: reader })
    await waitSynced(reader)
    await waitFor(() => rdoc.getText('t').toString().includes('written before the reader joined'), 10_000, {
      message: 'read-only client did not sync existing content'
    })
    writer.doc.getText('t').insert(writer.doc.getText('t').length, 'live edit. ')
    await waitFor(() => rdoc.getText('t').toString().includes('live edit.'), 10_000, {
      message: 'read-only client did not receive a live update'
    })
    assert.equal(denials.length, 0, `permission denied before any edit: ${JSON.stringify(denials)}`)

    // now the reader tries to write
    rdoc.getText('t').insert(0, 'READONLY-EDIT ')
    rdoc.getMap('m').set('readonly', 'READONLY-MAP')
    await waitFor(() => denials.length > 0, 5000, { message: 'read-only client got no permission-denied auth message' })
    assert.equal(typeof denials[0].reason, 'string')

    // the writer keeps working and never sees the reader's edit
    writer.doc.getText('t').insert(writer.doc.getText('t').length, 'after. ')
    await waitFor(() => rdoc.getText('t').toString().includes('after.'), 10_000, {
      message: 'read-only client stopped receiving updates after the refusal'
    })
    await sleep(500)
    assert.ok(!writer.doc.getText('t').toString().includes('READONLY-EDIT'), 'writer received the read-only edit')
    assert.equal(writer.doc.getMap('m').get('readonly'), undefined)
    assert.equal(stateVector(writer.doc).has(rdoc.clientID), false, 'read-only client id in the writer\'s state vector')

    const fresh = await connectedClient(server.url, docId, { params: { token: tokens.all } })
    clients.push(fresh)
    await waitFor(() => fresh.doc.getText('t').toString().includes('after.'), 10_000)
    assert.ok(!fresh.doc.getText('t').toString().includes('READONLY-EDIT'), 'the server applied the read-only edit')
    assert.equal(stateVector(fresh.doc).has(rdoc.clientID), false)
  })

  it('a read-only client\'s offline edits sent in sync step 2 on connect are refused too', async () => {
    const docId = 'notes-readonly-step2'
    const writer = await connectedClient(server.url, docId, { params: { token: tokens.notesWrite } })
    clients.push(writer)
    writer.doc.getText('t').insert(0, 'server content. ')
    await sleep(200)

    const rdoc = new Y.Doc()
    rdoc.getText('t').insert(0, 'READONLY-OFFLINE ')
    const reader = makeProvider(server.url, docId, rdoc, { params: { token: tokens.multi } })
    const denials = recordDenials(reader)
    clients.push({ doc: rdoc, provider: reader })
    await waitSynced(reader)
    await waitFor(() => rdoc.getText('t').toString().includes('server content.'), 10_000)
    await waitFor(() => denials.length > 0, 5000, { message: 'no permission-denied for edits carried in sync step 2' })
    await sleep(500)
    assert.ok(!writer.doc.getText('t').toString().includes('READONLY-OFFLINE'), 'writer received the read-only offline edit')
    const fresh = await connectedClient(server.url, docId, { params: { token: tokens.all } })
    clients.push(fresh)
    assert.ok(!fresh.doc.getText('t').toString().includes('READONLY-OFFLINE'), 'the server applied the read-only offline edit')
  })

  it('raw: a read-only update gets [2, 0, reason] back and is not applied', async () => {
    const docId = 'notes-readonly-raw'
    const watcher = await connectedClient(server.url, docId, { params: { token: tokens.notesWrite } })
    clients.push(watcher)
    const raw = openRaw(server.url, docId + '?token=' + tokens.notesRead)
    raws.push(raw)
    await raw.opened
    const d = new Y.Doc()
    d.clientID = 770_001
    d.getText('t').insert(0, 'RAW-READONLY')
    raw.send(updateMessage(Y.encodeStateAsUpdate(d)))
    const msg = decodeMessage(await raw.waitForMessage((m) => m.type === MSG_AUTH, 5000))
    assert.equal(msg.type, 2)
    assert.equal(msg.subtype, 0, 'auth subtype must be 0 (permission denied)')
    assert.equal(typeof msg.reason, 'string')
    await sleep(500)
    assert.equal(stateVector(watcher.doc).has(770_001), false, 'read-only raw update was broadcast')
    raw.close()
  })

  it('refused read-only edits are not in the store after a restart', async () => {
    destroyAll(clients)
    for (const r of raws) r.terminate()
    assert.equal(await server.stop(), 0)
    server = await startServer({ name: 'auth-restarted', dataDir, args: ['--jwt-hs256-secret', SECRET] })
    for (const [docId, expected, forbidden] of [
      ['notes-readonly', 'after.', 'READONLY'],
      ['notes-readonly-step2', 'server content.', 'READONLY'],
      ['notes-readonly-raw', '', 'RAW-READONLY']
    ]) {
      const c = await connectedClient(server.url, docId, { params: { token: tokens.all } })
      clients.push(c)
      if (expected) await waitFor(() => c.doc.getText('t').toString().includes(expected), 10_000, { message: `${docId}: content lost` })
      assert.ok(!c.doc.getText('t').toString().includes(forbidden), `${docId}: read-only edit persisted`)
      assert.equal(c.doc.getMap('m').get('readonly'), undefined)
    }
  })

  it('tokens never appear in the server logs', () => {
    const logs = server.logs()
    for (const [name, t] of Object.entries(tokens)) {
      assert.ok(!logs.includes(t), `token ${name} appears in the logs`)
      assert.ok(!logs.includes(t.split('.')[2]), `signature of token ${name} appears in the logs`)
    }
  })
})

describe('origin allow-list', () => {
  let server
  dumpLogsOnFailure(afterEach, () => [server])

  before(async () => {
    server = await startServer({
      name: 'origin',
      args: ['--allow-origin', 'http://good.example', '--allow-origin', 'http://also-good.example']
    })
  })

  after(async () => {
    if (server) assert.equal(await server.stop(), 0, 'server exit code after SIGINT')
  })

  it('a disallowed Origin gets HTTP 403 and no upgrade', async () => {
    for (const origin of ['http://evil.example', 'http://good.example.evil.example', 'https://good.example', 'null']) {
      const r = await tryUpgrade(server.url, 'origin-doc', { headers: { Origin: origin } })
      assert.deepEqual([r.opened, r.status], [false, 403], `Origin ${origin}: ${JSON.stringify(r)}`)
    }
  })

  it('an allowed Origin (either of the repeated flags) upgrades', async () => {
    for (const origin of ['http://good.example', 'http://also-good.example']) {
      const r = await tryUpgrade(server.url, 'origin-doc', { headers: { Origin: origin } })
      assert.equal(r.opened, true, `Origin ${origin}: ${JSON.stringify(r)}`)
    }
  })

  it('no Origin header (non-browser client) upgrades and a provider syncs', async () => {
    const r = await tryUpgrade(server.url, 'origin-doc')
    assert.equal(r.opened, true, JSON.stringify(r))
    const clients = []
    try {
      const a = await connectedClient(server.url, 'origin-doc')
      const b = await connectedClient(server.url, 'origin-doc')
      clients.push(a, b)
      a.doc.getText('t').insert(0, 'no origin')
      await waitFor(() => b.doc.getText('t').toString() === 'no origin', 10_000)
    } finally {
      destroyAll(clients)
    }
  })
})
