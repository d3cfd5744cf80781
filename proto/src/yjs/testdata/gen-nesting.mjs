// Generates proto/src/yjs/testdata/nesting.txt: real Yjs update v1 binaries
// for the shared-type nesting tracker (proto/src/yjs/nesting.rs), written by
// the reference JavaScript implementation so the tracker is tested against
// the parent/origin encodings browsers actually produce.
//
// Generated with yjs 13.6.33 (lib0 0.2.120) on Node 20. The npm project lives
// outside the repo (node_modules is never committed):
//
//   mkdir -p /tmp/nestvec && cd /tmp/nestvec
//   npm init -y && npm install yjs@13.6
//   cp <repo>/proto/src/yjs/testdata/gen-nesting.mjs .
//   node gen-nesting.mjs <repo>/proto/src/yjs/testdata/nesting.txt
//
// Output: one `name hex` pair per line, every value an update v1. Names
// ending in `_NNN` are incremental updates (what `doc.on('update')` hands a
// provider), to be applied in numeric order; the Rust tests group them by
// prefix. Root types are depth 0, so a shared type inserted into a root type
// has depth 1, a type inside that one depth 2, and so on.
//
//   map_inc_NNN       Y.Map('root') > Y.Map (1) > Y.Array (2) > Y.Map (3),
//                     plus a Y.Text (2) with inserts, deletes and formatting
//                     and a root Y.Text; two clients (11 and 99) relaying to
//                     each other. Deepest type: 3.
//   map_full          Y.encodeStateAsUpdate of that document (client 99's
//                     block is written first and refers to client 11's).
//   map_more          One further incremental update on top of map_*: a
//                     Y.Map (3) holding a Y.Text (4), pushed after existing
//                     array elements (implicit parent through its origin).
//   chain_explicit_NNN  Y.Array chain 40 deep, level k in update k: each new
//                     array inserted into the previous, empty one (explicit
//                     parent ID). Level k has depth k.
//   chain_implicit_NNN  The same chain, but each level first gets a number and
//                     the nested array is inserted after it (origin set, no
//                     parent info): depth through the origin's parent.
//   chain_right_NNN   The same, with the nested array inserted *before* the
//                     number (right origin only).
//   xml_inc_NNN       ProseMirror-like Y.XmlFragment > Y.XmlElement
//                     ('paragraph' / 'blockquote' > 'paragraph') > Y.XmlText
//                     with formatting and attributes, two clients (44 and
//                     4400), paragraphs deleted again. Deepest type: 3.
//   xml_full          Y.encodeStateAsUpdate of that document (holds GC
//                     structs for the deleted paragraphs' contents).
//   gc_full           A snapshot whose deleted nested types were garbage
//                     collected into GC structs, plus live content after them.
// Client ids are fixed so the output is deterministic.

import fs from 'node:fs'
import * as Y from 'yjs'

const lines = []
const seen = new Set()
const hex = (u8) => Buffer.from(u8).toString('hex')

const add = (name, bytes) => {
  if (!/^[a-z0-9_]+$/.test(name)) throw new Error(`bad vector name ${name}`)
  if (seen.has(name)) throw new Error(`duplicate vector name ${name}`)
  seen.add(name)
  lines.push(`${name} ${hex(bytes)}`)
}

const addSeq = (prefix, updates) => {
  updates.forEach((u, i) => add(`${prefix}_${String(i + 1).padStart(3, '0')}`, u))
}

const mkdoc = (clientID) => {
  const d = new Y.Doc()
  d.clientID = clientID
  return d
}

// Two documents that forward every local update to each other at once, like
// two browsers behind a relay. `log` receives every update in the order a
// server would see them.
const relayPair = (idA, idB) => {
  const a = mkdoc(idA)
  const b = mkdoc(idB)
  const log = []
  a.on('update', (u, origin) => {
    if (origin !== 'remote') {
      log.push(u)
      Y.applyUpdate(b, u, 'remote')
    }
  })
  b.on('update', (u, origin) => {
    if (origin !== 'remote') {
      log.push(u)
      Y.applyUpdate(a, u, 'remote')
    }
  })
  return { a, b, log }
}

// Replays incremental updates into a fresh document and checks it ends up
// with the same content: proves the sequence is complete and causal.
const checkReplay = (updates, expected, rootName, kind) => {
  const d = new Y.Doc()
  for (const u of updates) Y.applyUpdate(d, u)
  const pending = d.store.pendingStructs !== null || d.store.pendingDs !== null
  if (pending) throw new Error(`${rootName}: replay left pending structs`)
  const got = d[kind](rootName).toJSON()
  const want = expected[kind](rootName).toJSON()
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`${rootName}: replay differs`)
  }
}

const structKinds = (update) => Y.decodeUpdate(update).structs.map((s) => s.constructor.name)

// (1) Map > Array > Map, plus text.
{
  const { a, b, log } = relayPair(11, 99)
  const root = a.getMap('root')
  const outer = new Y.Map()
  root.set('outer', outer)
  const arr = new Y.Array()
  outer.set('items', arr)
  const inner = new Y.Map()
  arr.push([inner]) // first element: explicit parent
  inner.set('title', 'first')
  const body = new Y.Text()
  outer.set('body', body)
  body.insert(0, 'hello world 🌍')
  body.insert(5, ',') // origin in the middle of a multi-clock string
  body.delete(0, 1)
  body.format(0, 4, { bold: true })
  a.transact(() => {
    const m = new Y.Map()
    arr.insert(0, [m]) // right origin only
    m.set('k', 1)
  })
  inner.set('title', 'renamed') // map overwrite: origin = old value
  a.getText('notes').insert(0, 'notes')
  // Client 99 edits on top of client 11's items.
  const bOuter = b.getMap('root').get('outer')
  bOuter.get('body').insert(3, 'XY')
  bOuter.get('items').push([new Y.Map()])
  bOuter.get('items').get(1).set('by', 'b')
  b.getText('notes').insert(5, ' more')
  body.insert(body.length, '!')
  root.set('count', 3)
  addSeq('map_inc', log)
  checkReplay(log, a, 'root', 'getMap')
  const full = Y.encodeStateAsUpdate(a)
  add('map_full', full)
  // Further update: Map (3) holding a Text (4), after existing elements.
  let more = null
  a.once('update', (u) => {
    more = u
  })
  a.transact(() => {
    const m = new Y.Map()
    arr.push([m])
    m.set('t', new Y.Text('x'))
  })
  if (!more) throw new Error('no update')
  add('map_more', more)
}

// (2) (3) chains 40 deep.
const chain = (name, clientID, build) => {
  const doc = mkdoc(clientID)
  const log = []
  doc.on('update', (u) => log.push(u))
  let prev = doc.getArray('chain')
  for (let k = 1; k <= 40; k++) {
    prev = doc.transact(() => build(prev, k))
  }
  addSeq(name, log)
  checkReplay(log, doc, 'chain', 'getArray')
  if (log.length !== 40) throw new Error(`${name}: ${log.length} updates`)
}
chain('chain_explicit', 22, (prev) => {
  const a = new Y.Array()
  prev.insert(0, [a])
  return a
})
chain('chain_implicit', 33, (prev, k) => {
  prev.insert(0, [k])
  const a = new Y.Array()
  prev.insert(1, [a])
  return a
})
chain('chain_right', 34, (prev, k) => {
  prev.insert(0, [k])
  const a = new Y.Array()
  prev.insert(0, [a])
  return a
})

// (4) ProseMirror-like XML.
{
  const { a, b, log } = relayPair(44, 4400)
  const para = (text, marks) => {
    const p = new Y.XmlElement('paragraph')
    const t = new Y.XmlText()
    p.insert(0, [t])
    t.insert(0, text)
    if (marks) t.format(0, Math.min(4, text.length), marks)
    return p
  }
  const fa = a.getXmlFragment('prosemirror')
  for (let i = 0; i < 30; i++) {
    const doc = i % 2 === 0 ? a : b
    const frag = doc.getXmlFragment('prosemirror')
    doc.transact(() => {
      frag.insert(frag.length, [para(`paragraph ${i} text`, i % 3 === 0 ? { bold: true } : null)])
    })
  }
  a.transact(() => {
    const q = new Y.XmlElement('blockquote')
    fa.insert(3, [q])
    q.insert(0, [para('quoted', { italic: true })])
    q.setAttribute('cite', 'someone')
  })
  // Edits inside existing paragraphs, from both sides.
  for (let i = 0; i < 10; i++) {
    const doc = i % 2 === 0 ? a : b
    const p = doc.getXmlFragment('prosemirror').get(i * 2)
    const t = p.get(0)
    t.insert(2, 'ins ')
    t.format(1, 3, { link: { href: 'https://example.com/' + i } })
    t.delete(0, 1)
    p.setAttribute('align', i % 2 ? 'left' : 'center')
  }
  // Delete a few paragraphs (their text becomes GC in a snapshot).
  fa.delete(5, 2)
  b.getXmlFragment('prosemirror').delete(10, 1)
  addSeq('xml_inc', log)
  checkReplay(log, a, 'prosemirror', 'getXmlFragment')
  const full = Y.encodeStateAsUpdate(a)
  if (!structKinds(full).includes('GC')) throw new Error('xml_full: expected GC structs')
  add('xml_full', full)
}

// GC'd nested types in a snapshot.
{
  const doc = mkdoc(55)
  const root = doc.getMap('root')
  const arr = new Y.Array()
  root.set('gone', arr)
  const m = new Y.Map()
  arr.push([m, 'a', 'b'])
  m.set('t', new Y.Text('deep text'))
  root.delete('gone')
  const live = new Y.Array()
  root.set('live', live)
  live.push([new Y.Map()])
  const full = Y.encodeStateAsUpdate(doc)
  if (!structKinds(full).includes('GC')) throw new Error('gc_full: expected GC structs')
  add('gc_full', full)
}

// Written to a file (not stdout) so that yjs' console warnings can never end up in the vectors.
if (process.argv.length < 3) throw new Error('usage: node gen-nesting.mjs OUTFILE')
const header = [
  '# Generated by gen-nesting.mjs (same folder) with the reference JavaScript implementation',
  `# (yjs ${JSON.parse(fs.readFileSync(new URL('./node_modules/yjs/package.json', import.meta.url))).version}). Do not edit by hand: re-run the script.`,
  '# Format: `name hex` per line; lines starting with # are comments.'
]
fs.writeFileSync(process.argv[2], header.concat(lines).join('\n') + '\n')
