// Convergence: 3 documents × 4 stock providers each, all editing concurrently.
import { describe, it, before, after, afterEach } from 'node:test'
import assert from 'node:assert/strict'
import * as prng from 'lib0/prng'
import { startServer, dumpLogsOnFailure } from './server.mjs'
import { Y, connectedClient, destroyAll, waitFor, sleep, stateVector, canonicalJson } from './util.mjs'

const DOCS = 3
const CLIENTS_PER_DOC = 4
const ROUNDS = 40
// each document only ever sees characters from its own alphabet, so a leak is visible
const ALPHABETS = ['abcdef', 'ghijkl', 'mnopqr']

function svKey (doc) {
  return Buffer.from(Y.encodeStateVector(doc)).toString('hex')
}

describe('convergence', () => {
  let server
  const clients = [] // { doc, provider, docIndex, clientIndex }
  const docIds = Array.from({ length: DOCS }, (_, i) => `conv-${i}-${process.pid}`)

  dumpLogsOnFailure(afterEach, () => [server])

  before(async () => {
    server = await startServer({ name: 'convergence' })
  })

  after(async () => {
    destroyAll(clients)
    if (server) assert.equal(await server.stop(), 0, 'server exit code after SIGINT')
  })

  it('3 docs × 4 providers converge after concurrent random edits', async () => {
    for (let d = 0; d < DOCS; d++) {
      for (let c = 0; c < CLIENTS_PER_DOC; c++) {
        const cl = await connectedClient(server.url, docIds[d])
        clients.push(Object.assign(cl, { docIndex: d, clientIndex: c }))
      }
    }

    // every client edits at the same time, in rounds with random jitter
    const expectedMapKeys = Array.from({ length: DOCS }, () => new Set())
    const work = clients.map(async (cl, idx) => {
      const rnd = prng.create(0x7a4d3 + idx * 7919)
      const alphabet = ALPHABETS[cl.docIndex]
      const text = cl.doc.getText('text')
      const map = cl.doc.getMap('map')
      for (let r = 0; r < ROUNDS; r++) {
        const ops = prng.int32(rnd, 1, 3)
        for (let o = 0; o < ops; o++) {
          const kind = prng.int32(rnd, 0, 9)
          if (kind < 5) {
            const len = prng.int32(rnd, 1, 6)
            let s = ''
            for (let i = 0; i < len; i++) s += alphabet[prng.int32(rnd, 0, alphabet.length - 1)]
            text.insert(prng.int32(rnd, 0, text.length), s)
          } else if (kind < 7 && text.length > 0) {
            const pos = prng.int32(rnd, 0, text.length - 1)
            const del = Math.min(prng.int32(rnd, 1, 4), text.length - pos)
            text.delete(pos, del)
          } else {
            const key = `d${cl.docIndex}-k${prng.int32(rnd, 0, 7)}`
            map.set(key, { by: cl.clientIndex, round: r, v: prng.int32(rnd, 0, 1000) })
            expectedMapKeys[cl.docIndex].add(key)
          }
        }
        await sleep(prng.int32(rnd, 0, 8))
      }
      // one key per client that nobody else writes
      const own = `d${cl.docIndex}-own-${cl.clientIndex}`
      map.set(own, cl.doc.clientID)
      expectedMapKeys[cl.docIndex].add(own)
      text.insert(0, alphabet[0])
    })
    await Promise.all(work)

    for (let d = 0; d < DOCS; d++) {
      const group = clients.filter((c) => c.docIndex === d)
      await waitFor(() => {
        const sv0 = svKey(group[0].doc)
        const t0 = group[0].doc.getText('text').toString()
        const m0 = canonicalJson(group[0].doc.getMap('map').toJSON())
        return group.every((c) => svKey(c.doc) === sv0 &&
          c.doc.getText('text').toString() === t0 &&
          canonicalJson(c.doc.getMap('map').toJSON()) === m0)
      }, 30_000, {
        message: () => `doc ${docIds[d]} did not converge: ` + group.map((c) =>
          `${c.doc.clientID}: sv=${svKey(c.doc)} len=${c.doc.getText('text').length}`).join('; ')
      })

      // identical state vectors and identical content
      const svs = group.map((c) => Y.encodeStateVector(c.doc))
      const texts = group.map((c) => c.doc.getText('text').toString())
      const maps = group.map((c) => c.doc.getMap('map').toJSON())
      for (let i = 1; i < group.length; i++) {
        assert.deepEqual(svs[i], svs[0], `state vector of client ${i} of doc ${d}`)
        assert.equal(texts[i], texts[0], `text of client ${i} of doc ${d}`)
        assert.deepEqual(maps[i], maps[0], `map of client ${i} of doc ${d}`)
      }
      // identical full state (decoded) as well
      const full0 = group[0].doc.getText('text').toDelta()
      for (const c of group) assert.deepEqual(c.doc.getText('text').toDelta(), full0)

      // the state vector contains exactly this doc's 4 clients: nothing leaked in
      const ownIds = new Set(group.map((c) => c.doc.clientID))
      const svClients = [...stateVector(group[0].doc).keys()]
      assert.deepEqual(new Set(svClients), ownIds, `clients in the state vector of doc ${d}`)

      // text only uses this doc's alphabet; map only has this doc's keys
      const allowed = new RegExp(`^[${ALPHABETS[d]}]*$`)
      assert.match(texts[0], allowed, `doc ${d} text contains foreign characters`)
      assert.ok(texts[0].length > 0)
      assert.deepEqual(new Set(Object.keys(maps[0])), expectedMapKeys[d], `map keys of doc ${d}`)
    }
  })

  it('a late joiner of each doc loads the converged state', async () => {
    for (let d = 0; d < DOCS; d++) {
      const group = clients.filter((c) => c.docIndex === d)
      const late = await connectedClient(server.url, docIds[d])
      clients.push(Object.assign(late, { docIndex: -1 }))
      await waitFor(() => svKey(late.doc) === svKey(group[0].doc), 10_000, {
        message: `late joiner of ${docIds[d]} did not reach the converged state vector`
      })
      assert.equal(late.doc.getText('text').toString(), group[0].doc.getText('text').toString())
      assert.deepEqual(late.doc.getMap('map').toJSON(), group[0].doc.getMap('map').toJSON())
    }
  })
})
