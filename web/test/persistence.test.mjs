// Persistence: what clients observed survives a SIGINT restart (and a SIGKILL).
import { describe, it, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { startServer, makeDataDir, dumpLogsOnFailure } from './server.mjs'
import { Y, connectedClient, destroyAll, waitFor, httpRequest } from './util.mjs'

const sv = (doc) => Buffer.from(Y.encodeStateVector(doc)).toString('hex')

function snapshot (doc) {
  return {
    text: doc.getText('text').toString(),
    delta: doc.getText('text').toDelta(),
    map: doc.getMap('map').toJSON(),
    list: doc.getArray('list').toJSON(),
    sv: sv(doc)
  }
}

function writeContent (doc, tag) {
  const text = doc.getText('text')
  text.insert(0, `hello ${tag} `)
  text.insert(text.length, 'world')
  text.format(0, 5, { bold: true })
  text.delete(6, 2)
  const map = doc.getMap('map')
  map.set('title', `doc ${tag}`)
  map.set('count', 42)
  map.set('nested', { a: [1, 2, 3], b: { c: 'd' } })
  const sub = new Y.Map()
  map.set('sub', sub)
  sub.set('inner', 'value')
  doc.getArray('list').push(['x', 'y', 'z'])
  map.delete('count')
}

/** Does the data directory hold a SQLite database file? */
function findSqliteFiles (dir) {
  const out = []
  const walk = (d) => {
    for (const name of readdirSync(d)) {
      const p = join(d, name)
      const st = statSync(p)
      if (st.isDirectory()) walk(p)
      else if (st.size >= 16 && readFileSync(p).subarray(0, 16).toString('latin1') === 'SQLite format 3\0') out.push(p)
    }
  }
  walk(dir)
  return out
}

describe('persistence', () => {
  let server
  const clients = []

  dumpLogsOnFailure(afterEach, () => [server])

  after(async () => {
    destroyAll(clients)
    if (server) await server.stop().catch(() => server.kill())
  })

  it('text + map survive SIGINT (exit code 0) and a restart with the same --data', async () => {
    const dataDir = makeDataDir()
    server = await startServer({ name: 'persist-1', dataDir })
    const docId = 'persist-doc'
    const a = await connectedClient(server.url, docId)
    const b = await connectedClient(server.url, docId)
    clients.push(a, b)
    writeContent(a.doc, 'A')
    // B observing everything means the server committed it (commit happens before broadcast)
    await waitFor(() => sv(b.doc) === sv(a.doc), 10_000, { message: 'B did not receive A\'s edits' })
    const expected = snapshot(a.doc)
    assert.deepEqual(snapshot(b.doc), expected)
    destroyAll(clients)

    const code = await server.stop('SIGINT')
    assert.equal(code, 0, 'exit code after SIGINT')
    assert.ok(findSqliteFiles(dataDir).length > 0, `no SQLite file in ${dataDir}`)

    server = await startServer({ name: 'persist-1-restarted', dataDir })
    const fresh = await connectedClient(server.url, docId)
    clients.push(fresh)
    await waitFor(() => sv(fresh.doc) === expected.sv, 10_000, {
      message: () => `fresh client after restart has sv ${sv(fresh.doc)}, expected ${expected.sv}`
    })
    assert.deepEqual(snapshot(fresh.doc), expected)
    assert.equal(fresh.doc.getMap('map').get('sub').get('inner'), 'value')

    // the restarted server keeps accepting and persisting edits
    fresh.doc.getText('text').insert(0, '>> ')
    const other = await connectedClient(server.url, docId)
    clients.push(other)
    await waitFor(() => other.doc.getText('text').toString().startsWith('>> '), 10_000)
    destroyAll(clients)
    assert.equal(await server.stop(), 0)
    server = null
  })

  it('many small updates from several clients all survive a restart', async () => {
    const dataDir = makeDataDir()
    server = await startServer({ name: 'persist-2', dataDir })
    const docId = 'persist-many'
    const writers = []
    for (let i = 0; i < 3; i++) writers.push(await connectedClient(server.url, docId))
    const observer = await connectedClient(server.url, docId)
    clients.push(...writers, observer)
    for (let k = 0; k < 100; k++) {
      for (let i = 0; i < writers.length; i++) {
        writers[i].doc.getArray('list').push([`w${i}-${k}`])
      }
    }
    await waitFor(() => observer.doc.getArray('list').length === 300, 20_000, {
      message: () => `observer has ${observer.doc.getArray('list').length}/300 items`
    })
    await waitFor(() => writers.every((w) => sv(w.doc) === sv(observer.doc)), 10_000)
    const expected = snapshot(observer.doc)
    destroyAll(clients)
    assert.equal(await server.stop(), 0)

    server = await startServer({ name: 'persist-2-restarted', dataDir })
    const fresh = await connectedClient(server.url, docId)
    clients.push(fresh)
    await waitFor(() => sv(fresh.doc) === expected.sv, 10_000, { message: 'fresh client did not load all 300 items' })
    assert.deepEqual(snapshot(fresh.doc), expected)
    destroyAll(clients)
    assert.equal(await server.stop(), 0)
    server = null
  })

  it('observed updates are durable even if the server is SIGKILLed', async () => {
    const dataDir = makeDataDir()
    server = await startServer({ name: 'persist-3', dataDir })
    const docId = 'persist-kill'
    const a = await connectedClient(server.url, docId)
    const b = await connectedClient(server.url, docId)
    clients.push(a, b)
    writeContent(a.doc, 'K')
    await waitFor(() => sv(b.doc) === sv(a.doc), 10_000, { message: 'B did not receive A\'s edits' })
    const expected = snapshot(b.doc)
    destroyAll(clients)
    await server.kill()

    server = await startServer({ name: 'persist-3-restarted', dataDir })
    const fresh = await connectedClient(server.url, docId)
    clients.push(fresh)
    await waitFor(() => sv(fresh.doc) === expected.sv, 10_000, {
      message: 'content observed by a client before SIGKILL is missing after restart'
    })
    assert.deepEqual(snapshot(fresh.doc), expected)
    destroyAll(clients)
    assert.equal(await server.stop(), 0)
    server = null
  })

  it('SIGINT while a client is writing: everything any client observed is there after restart', async () => {
    const dataDir = makeDataDir()
    server = await startServer({ name: 'persist-4', dataDir })
    const docId = 'persist-inflight'
    const writer = await connectedClient(server.url, docId)
    const observer = await connectedClient(server.url, docId)
    clients.push(writer, observer)
    const list = writer.doc.getArray('list')
    let stop = false
    const pump = (async () => {
      for (let k = 0; k < 2000 && !stop; k++) {
        list.push([k])
        if (k % 10 === 9) await new Promise((resolve) => setImmediate(resolve))
      }
    })()
    await waitFor(() => observer.doc.getArray('list').length >= 200, 20_000, { message: 'observer saw fewer than 200 items' })
    const code = await server.stop('SIGINT')
    stop = true
    await pump
    assert.equal(code, 0, 'exit code after SIGINT under load')
    const seen = observer.doc.getArray('list').toArray()
    destroyAll(clients)

    server = await startServer({ name: 'persist-4-restarted', dataDir })
    const fresh = await connectedClient(server.url, docId)
    clients.push(fresh)
    const loaded = fresh.doc.getArray('list').toArray()
    assert.ok(loaded.length >= seen.length, `observer saw ${seen.length} items, only ${loaded.length} survived`)
    assert.deepEqual(loaded.slice(0, seen.length), seen, 'the observed prefix differs after restart')
    destroyAll(clients)
    assert.equal(await server.stop(), 0)
    server = null
  })

  it('with --snapshot-every 7 (snapshots + tail) the restarted state is identical', async () => {
    const dataDir = makeDataDir()
    const args = ['--snapshot-every', '7']
    server = await startServer({ name: 'persist-5', dataDir, args })
    const docId = 'persist-snapshots'
    const a = await connectedClient(server.url, docId)
    const b = await connectedClient(server.url, docId)
    clients.push(a, b)
    for (let k = 0; k < 103; k++) {
      const c = k % 2 ? a : b
      c.doc.getText('text').insert(0, `${k};`)
      if (k % 5 === 0) c.doc.getMap('map').set(`k${k % 3}`, k)
      if (k % 11 === 0) c.doc.getText('text').delete(0, 2)
    }
    await waitFor(() => sv(a.doc) === sv(b.doc), 10_000, { message: 'A and B did not converge' })
    const expected = snapshot(a.doc)
    destroyAll(clients)
    assert.equal(await server.stop(), 0)

    server = await startServer({ name: 'persist-5-restarted', dataDir, args })
    const fresh = await connectedClient(server.url, docId)
    clients.push(fresh)
    await waitFor(() => sv(fresh.doc) === expected.sv, 10_000, { message: 'snapshot + tail did not restore the state vector' })
    assert.deepEqual(snapshot(fresh.doc), expected)
    // and it keeps going after the reload
    fresh.doc.getText('text').insert(0, 'more;')
    const again = await connectedClient(server.url, docId)
    clients.push(again)
    await waitFor(() => again.doc.getText('text').toString().startsWith('more;'), 10_000)
    destroyAll(clients)
    assert.equal(await server.stop(), 0)
    server = null
  })

  it('an idle doc that was unloaded (--idle-unload-secs 1) reloads with the same content', async () => {
    const dataDir = makeDataDir()
    server = await startServer({ name: 'persist-6', dataDir, args: ['--idle-unload-secs', '1'] })
    const docId = 'persist-unload'
    const a = await connectedClient(server.url, docId)
    const b = await connectedClient(server.url, docId)
    clients.push(a, b)
    writeContent(a.doc, 'U')
    await waitFor(() => sv(b.doc) === sv(a.doc), 10_000)
    const expected = snapshot(a.doc)
    destroyAll(clients)
    // wait until the server reports the doc unloaded
    const loaded = async () => {
      const r = await httpRequest(server.httpUrl + '/metrics')
      const lines = r.body.split('\n').filter((l) => /^tandem_documents_loaded[{\s]/.test(l))
      return lines.length ? lines.reduce((acc, l) => acc + Number(l.trim().split(/\s+/).pop()), 0) : NaN
    }
    await waitFor(async () => (await loaded()) === 0, 10_000, { message: 'doc was not unloaded after 1 s idle' })
    const fresh = await connectedClient(server.url, docId)
    clients.push(fresh)
    await waitFor(() => sv(fresh.doc) === expected.sv, 10_000, { message: 'reloaded doc differs' })
    assert.deepEqual(snapshot(fresh.doc), expected)
    destroyAll(clients)
    assert.equal(await server.stop(), 0)
    server = null
  })
})
