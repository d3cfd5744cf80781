// @tandem/client: the TypeScript client of Tandem's native protocol (`ws://HOST:PORT/v1`, specified in
// docs/protocol.md). One socket carries every room (chat with acks and resume, presence, typing) and
// every document (a Yjs provider) of the client; it reconnects by itself, resumes each room from the
// last event it saw, re-sends unacknowledged messages under their original ids (the server drops the
// duplicates), and resyncs each document.

import * as Y from 'yjs'
import * as encoding from 'lib0/encoding'
import * as decoding from 'lib0/decoding'
import * as syncProtocol from 'y-protocols/sync'
import * as awarenessProtocol from 'y-protocols/awareness'

// ---------------------------------------------------------------------------------------------
// Wire types

/** A position in a room's event stream: the `(epoch, seq)` of an event. */
export interface Position {
  epoch: number
  seq: number
}

/** A committed room event (the event log's envelope). */
export interface RoomEvent {
  id: string
  version: number
  stream: string
  seq: number
  epoch: number
  actor: string
  ts: number
  type: string
  payload: any
}

/** One user's merged presence: the latest state any of their connections set, and how many. */
export interface PresenceEntry {
  user: string
  state: unknown
  connections: number
}

/** The acknowledgement of a send, edit or deletion: where the event sits in the room's stream. */
export interface Ack {
  epoch: number
  seq: number
  /** True when the server recognised a retry and appended nothing new. */
  duplicate?: boolean
}

/** A refusal from the server (see docs/protocol.md for the codes). */
export class TandemError extends Error {
  constructor (readonly code: string, message: string) {
    super(`${code}: ${message}`)
    this.name = 'TandemError'
  }
}

// ---------------------------------------------------------------------------------------------
// A tiny event emitter

type Listener = (...args: any[]) => void

export class Emitter {
  private listeners = new Map<string, Set<Listener>>()

  on (event: string, fn: Listener): this {
    let set = this.listeners.get(event)
    if (set === undefined) {
      set = new Set()
      this.listeners.set(event, set)
    }
    set.add(fn)
    return this
  }

  off (event: string, fn: Listener): this {
    this.listeners.get(event)?.delete(fn)
    return this
  }

  once (event: string, fn: Listener): this {
    const wrapped: Listener = (...args) => {
      this.off(event, wrapped)
      fn(...args)
    }
    return this.on(event, wrapped)
  }

  protected emit (event: string, ...args: any[]): void {
    for (const fn of [...(this.listeners.get(event) ?? [])]) {
      try {
        fn(...args)
      } catch (e) {
        // A listener's bug must not break the client's state machine.
        setTimeout(() => { throw e }, 0)
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// The client

export interface ClientOptions {
  /** `ws://HOST:PORT/v1` (or `wss://…`). */
  url: string
  /** A JWT, or a function returning one (called on every (re)connect). */
  token?: string | (() => string | Promise<string>)
  /** A WebSocket constructor (the `ws` package in Node.js); defaults to the global one. */
  WebSocket?: any
  /** Reconnect after the socket drops (default true). */
  reconnect?: boolean
  /** Reconnect back-off bounds in milliseconds (defaults 100 and 5000). */
  minReconnectMs?: number
  maxReconnectMs?: number
  /** How long a request waits for its reply while connected (default 15000 ms). */
  requestTimeoutMs?: number
}

interface PendingRequest {
  frame: any
  resolve: (v: any) => void
  reject: (e: Error) => void
  /** Re-sent after a reconnect (chat sends, edits, deletions: idempotent by id). */
  retry: boolean
  timer?: ReturnType<typeof setTimeout>
}

let idCounter = 0

/** History reads one socket may have in flight (the server refuses more with `limit`). */
const MAX_HISTORY = 4

/** A request id unique to this page (and, with the random part, across tabs and reloads). */
export function newId (prefix = 'r'): string {
  idCounter += 1
  const rand = Math.random().toString(36).slice(2, 10)
  return `${prefix}-${Date.now().toString(36)}-${idCounter.toString(36)}-${rand}`
}

/**
 * A connection to Tandem. Events: `open` (after each (re)connect's hello), `close` ({code, reason}),
 * `error` (a TandemError not tied to a request).
 */
export class TandemClient extends Emitter {
  /** The authenticated user, from the server's hello. */
  user: string | null = null
  /** The server's per-socket limits, from its hello. */
  limits: Record<string, number> = {}
  private ws: any = null
  private readonly opts: Required<Omit<ClientOptions, 'token' | 'WebSocket'>> & ClientOptions
  private readonly pending = new Map<string, PendingRequest>()
  private readonly rooms = new Map<string, Room>()
  private readonly docs = new Map<string, DocProvider>()
  private connected = false
  private closedByUser = false
  private attempts = 0
  private reconnectTimer: ReturnType<typeof setTimeout> | null = null
  private openWaiters: Array<() => void> = []
  private offline = false
  private generation = 0
  private historyInFlight = 0
  private historyWaiters: Array<() => void> = []

  constructor (opts: ClientOptions) {
    super()
    this.opts = {
      reconnect: true,
      minReconnectMs: 100,
      maxReconnectMs: 5000,
      requestTimeoutMs: 15000,
      ...opts
    }
    void this.connect()
  }

  /** Whether the socket is open and greeted. */
  get isConnected (): boolean {
    return this.connected
  }

  /** Resolves once connected (immediately if already). */
  ready (): Promise<void> {
    if (this.connected) return Promise.resolve()
    return new Promise((resolve) => this.openWaiters.push(resolve))
  }

  private async connect (): Promise<void> {
    if (this.closedByUser || this.offline) return
    // Only the latest attempt may open a socket (goOffline/goOnline during a token fetch).
    const attempt = ++this.generation
    let ws: any
    try {
      const WS = this.opts.WebSocket ?? (globalThis as any).WebSocket
      if (WS === undefined) throw new Error('no WebSocket implementation: pass options.WebSocket')
      let url = this.opts.url
      const token = typeof this.opts.token === 'function' ? await this.opts.token() : this.opts.token
      // close() or goOffline() while the token was being fetched, or a newer attempt: stay down.
      if (this.closedByUser || this.offline || attempt !== this.generation) return
      if (token !== undefined && token !== '') {
        url += (url.includes('?') ? '&' : '?') + 'token=' + encodeURIComponent(token)
      }
      ws = new WS(url)
    } catch (e) {
      // A token provider that failed, or a URL the WebSocket refused: report it and retry later.
      this.emit('error', e)
      this.scheduleReconnect()
      return
    }
    ws.binaryType = 'arraybuffer'
    this.ws = ws
    ws.onmessage = (ev: any) => {
      if (ws !== this.ws) return
      if (typeof ev.data === 'string') this.onText(ev.data)
      else this.onBinary(new Uint8Array(ev.data))
    }
    ws.onclose = (ev: any) => {
      if (ws !== this.ws) return
      this.onClose(ev?.code ?? 1006, ev?.reason ?? '')
    }
    ws.onerror = () => { /* followed by close */ }
  }

  private onClose (code: number, reason: string): void {
    const was = this.connected
    this.connected = false
    this.ws = null
    for (const [id, p] of this.pending) {
      if (p.timer !== undefined) clearTimeout(p.timer)
      p.timer = undefined
      if (!p.retry) {
        this.pending.delete(id)
        p.reject(new TandemError('disconnected', 'the connection closed before the reply'))
      }
    }
    for (const r of this.rooms.values()) r._disconnected()
    for (const d of this.docs.values()) d._disconnected()
    if (was) this.emit('close', { code, reason })
    if (this.closedByUser || !this.opts.reconnect) {
      for (const [id, p] of this.pending) {
        this.pending.delete(id)
        p.reject(new TandemError('closed', 'the client was closed'))
      }
      return
    }
    if (this.offline) return
    this.scheduleReconnect()
  }

  private scheduleReconnect (): void {
    if (this.closedByUser || this.offline || !this.opts.reconnect || this.reconnectTimer !== null) return
    const delay = Math.min(this.opts.maxReconnectMs, this.opts.minReconnectMs * 2 ** Math.min(this.attempts, 10))
    this.attempts += 1
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null
      void this.connect()
    }, delay * (0.5 + Math.random() / 2))
  }

  private onText (text: string): void {
    let m: any
    try {
      m = JSON.parse(text)
    } catch {
      return
    }
    if (m.t === 'hello') {
      this.user = m.user
      this.limits = m.limits ?? {}
      this.connected = true
      this.attempts = 0
      // Rooms first (rejoin with resume), then unacknowledged requests, then documents.
      for (const r of this.rooms.values()) r._reconnected()
      // Sends to rooms being rejoined go out after their `joined` reply (_resendFor).
      for (const p of this.pending.values()) {
        if (p.retry && this.rooms.get(p.frame.room)?.isJoined !== true) this.transmit(p)
      }
      for (const d of this.docs.values()) d._reconnected()
      this.emit('open')
      const waiters = this.openWaiters
      this.openWaiters = []
      for (const w of waiters) w()
      return
    }
    if (typeof m.id === 'string' && this.pending.has(m.id)) {
      const p = this.pending.get(m.id)!
      if (p.timer !== undefined) clearTimeout(p.timer)
      p.timer = undefined
      if (m.t === 'error' && p.retry && (m.code === 'unavailable' || m.code === 'shutting_down')) {
        // The outcome is unknown (the store may have committed it): keep it and re-send it with the
        // same id after the room is joined again; the server acknowledges it exactly once.
        return
      }
      this.pending.delete(m.id)
      if (m.t === 'error') p.reject(new TandemError(m.code, m.message))
      else p.resolve(m)
      // A joined or doc.opened reply also carries state: it is handled below.
      if (m.t !== 'joined' && m.t !== 'doc.opened') return
    }
    switch (m.t) {
      case 'joined':
      case 'event':
      case 'presence':
      case 'typing':
      case 'room.closed':
        this.rooms.get(m.room)?._frame(m)
        return
      case 'call.participant.joined':
      case 'call.participant.left':
      case 'track.published':
      case 'track.unpublished':
      case 'track.muted':
      case 'call.speaker':
      case 'call.closed':
      case 'call.ice':
        this.rooms.get(m.room)?._callFrame(m)
        return
      case 'doc.opened':
        // Handled here, synchronously: the document's binary frames may follow in the same tick.
        this.docs.get(m.doc)?._opened()
        return
      case 'doc.closed':
        this.docs.get(m.doc)?._closed(m)
        return
      case 'error':
        this.emit('error', new TandemError(m.code, m.message))
    }
  }

  private onBinary (data: Uint8Array): void {
    const decoder = decoding.createDecoder(data)
    let doc: string
    try {
      doc = decoding.readVarString(decoder)
    } catch {
      return
    }
    this.docs.get(doc)?._message(data.subarray(decoder.pos))
  }

  private transmit (p: PendingRequest): void {
    if (!this.connected || this.ws === null) return
    this.ws.send(JSON.stringify(p.frame))
    if (p.timer !== undefined) clearTimeout(p.timer)
    p.timer = setTimeout(() => {
      const id = p.frame.id
      if (this.pending.get(id) !== p) return
      if (p.retry) {
        // Idempotent: send it again (same id) while connected, else on the next connection.
        p.timer = undefined
        if (this.connected) this.transmit(p)
        return
      }
      this.pending.delete(id)
      p.reject(new TandemError('timeout', 'no reply in time'))
    }, this.opts.requestTimeoutMs)
  }

  /** Sends a request frame and resolves with its reply (rejects with a TandemError). */
  request (frame: any, retry = false): Promise<any> {
    if (frame.id === undefined) frame.id = newId()
    return new Promise((resolve, reject) => {
      const p: PendingRequest = { frame, resolve, reject, retry }
      this.pending.set(frame.id, p)
      if (this.connected) this.transmit(p)
      else if (!retry) {
        // Waits for the connection (queued), like retried requests, but gives up on close().
        const onOpen = (): void => {
          if (this.pending.get(frame.id) === p) this.transmit(p)
        }
        this.once('open', onOpen)
      }
    })
  }

  /** Sends a frame without waiting for any reply (dropped while disconnected). */
  notify (frame: any): void {
    if (this.connected && this.ws !== null) this.ws.send(JSON.stringify(frame))
  }

  /** @internal binary frames of document channels */
  _sendBinary (data: Uint8Array): void {
    if (this.connected && this.ws !== null) this.ws.send(data)
  }

  /** The handle of a room (not joined until `join()`). */
  room (id: string): Room {
    let r = this.rooms.get(id)
    if (r === undefined) {
      r = new Room(this, id)
      this.rooms.set(id, r)
    }
    return r
  }

  /** A Yjs provider for document `id` over this socket. */
  doc (id: string, ydoc: Y.Doc, opts: { awareness?: awarenessProtocol.Awareness } = {}): DocProvider {
    if (this.docs.has(id)) throw new Error(`document ${id} already has a provider on this client`)
    const d = new DocProvider(this, id, ydoc, opts.awareness ?? new awarenessProtocol.Awareness(ydoc), opts.awareness === undefined)
    this.docs.set(id, d)
    return d
  }

  /** @internal drops a request that has not been answered (its promise rejects with `err`) */
  _cancel (id: string, err: Error): void {
    const p = this.pending.get(id)
    if (p === undefined) return
    this.pending.delete(id)
    if (p.timer !== undefined) clearTimeout(p.timer)
    p.reject(err)
  }

  /** @internal a room that cannot be rejoined: its unacknowledged sends, edits, deletions fail */
  _rejectFor (room: string, err: Error): void {
    for (const [id, p] of this.pending) {
      if (p.retry && p.frame.room === room) this._cancel(id, err)
    }
  }

  /** @internal at most MAX_HISTORY history reads in flight (the server's per-socket cap) */
  async _history (frame: any): Promise<any> {
    while (this.historyInFlight >= MAX_HISTORY) {
      await new Promise<void>((resolve) => this.historyWaiters.push(resolve))
    }
    this.historyInFlight += 1
    try {
      return await this.request(frame)
    } finally {
      this.historyInFlight -= 1
      this.historyWaiters.shift()?.()
    }
  }

  /** @internal after a room was (re)joined: re-send its unacknowledged sends, edits, deletions */
  _resendFor (room: string): void {
    for (const p of this.pending.values()) {
      if (p.retry && p.frame.room === room) this.transmit(p)
    }
  }

  /** @internal */
  _forgetDoc (id: string): void {
    this.docs.delete(id)
  }

  /** @internal */
  _forgetRoom (id: string): void {
    this.rooms.delete(id)
  }

  /** Drops the socket and stays offline until `goOnline()`; sends made meanwhile wait (queued). */
  goOffline (): void {
    this.offline = true
    if (this.reconnectTimer !== null) {
      clearTimeout(this.reconnectTimer)
      this.reconnectTimer = null
    }
    const ws = this.ws
    this.dropConnection()
    // Offline now, not when the close event arrives: requests made from here on are queued.
    if (ws !== null) this.onClose(1000, 'offline')
  }

  /** Reconnects after `goOffline()`: rooms resume, queued sends go out, documents resync. */
  goOnline (): void {
    if (!this.offline) return
    this.offline = false
    if (this.ws === null && this.reconnectTimer === null) void this.connect()
  }

  /** Drops the socket as if the network failed; reconnects (unless offline or closed). */
  dropConnection (): void {
    const ws = this.ws
    if (ws === null) return
    if (typeof ws.terminate === 'function') ws.terminate()
    else ws.close()
  }

  /** Closes the client for good: no reconnect; pending requests reject. */
  close (): void {
    this.closedByUser = true
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer)
    for (const d of [...this.docs.values()]) d.destroy()
    const ws = this.ws
    if (ws !== null) ws.close(1000)
    else this.onClose(1000, 'closed')
  }
}

// ---------------------------------------------------------------------------------------------
// Rooms

export interface JoinResult {
  position: Position
  recovered?: boolean
  reason?: string
}

/**
 * A chat room. Events: `event` (every committed event, in order, exactly once), `message`
 * (`chat.message.sent` events), `presence` (Map user → entry, on every change), `typing` (string[] of
 * users typing), `reset` ({reason}: resume was impossible; reload with `history()`), `closed`
 * ({code, message}: the server dropped the room; the client rejoins by itself).
 */
export class Room extends Emitter {
  /** The last event seen (what a reconnect resumes from). */
  position: Position | null = null
  /** Who is here: one entry per user, however many tabs. */
  readonly presence = new Map<string, PresenceEntry>()
  /** Users typing now. */
  typists: string[] = []
  private joined = false
  private state: unknown = undefined
  private joining: Promise<JoinResult> | null = null
  private joinId: string | null = null
  private callObj: Call | null = null

  constructor (private readonly client: TandemClient, readonly id: string) {
    super()
  }

  /** Whether the application joined this room (and has not left it). */
  get isJoined (): boolean {
    return this.joined
  }

  /** Joins (and, after reconnects, rejoins) the room; `state` is this connection's presence. */
  join (opts: { state?: unknown } = {}): Promise<JoinResult> {
    if (opts.state !== undefined) this.state = opts.state
    this.joined = true
    return this.joinRetrying(Date.now() + JOIN_RETRY_MS, 100)
  }

  /**
   * A first join meets `unavailable` / `shutting_down` while the room's owner moves (a rebalance, a
   * failover): it is retried with backoff for up to JOIN_RETRY_MS; other refusals reject at once.
   */
  private joinRetrying (deadline: number, delay: number): Promise<JoinResult> {
    return this.sendJoin().catch(async (err: TandemError) => {
      const transient = err.code === 'unavailable' || err.code === 'shutting_down'
      if (!transient || !this.joined || Date.now() + delay > deadline) throw err
      await new Promise((resolve) => setTimeout(resolve, delay))
      if (!this.joined) throw err
      return await this.joinRetrying(deadline, Math.min(delay * 2, 1000))
    })
  }

  private sendJoin (): Promise<JoinResult> {
    const frame: any = { t: 'join', id: newId('j'), room: this.id }
    this.joinId = frame.id
    if (this.position !== null) frame.since = this.position
    if (this.state !== undefined) frame.state = this.state
    const p = this.client.request(frame).then((m: any) => ({
      position: m.position, recovered: m.recovered, reason: m.reason
    }))
    this.joining = p
    p.catch(() => {}).finally(() => {
      if (this.joining === p) this.joining = null
    })
    return p
  }

  /**
   * The room's call (one per room handle): `await room.call().join()` after `room.join()`. See
   * {@link Call}.
   */
  call (opts: CallOptions = {}): Call {
    if (this.callObj === null) this.callObj = new Call(this.client, this, opts)
    return this.callObj
  }

  /** @internal */
  _callFrame (m: any): void {
    this.callObj?._frame(m)
  }

  /** Leaves the room (no more events, presence removed). */
  async leave (): Promise<void> {
    if (this.callObj !== null) await this.callObj.leave().catch(() => {})
    this.joined = false
    this.presence.clear()
    this.typists = []
    this.client._forgetRoom(this.id)
    // A join still waiting to go out must not go out after the leave.
    if (this.joinId !== null) this.client._cancel(this.joinId, new TandemError('left', 'the room was left'))
    // Offline, there is nothing to leave: the server dropped the membership with the socket.
    if (this.client.isConnected) await this.client.request({ t: 'leave', room: this.id })
  }

  /**
   * Sends a chat message. Resolves with its ack once committed; while offline it waits and is sent
   * (with the same id, so at most once) after the reconnect.
   */
  send (text: string, opts: { id?: string } = {}): Promise<Ack> {
    return this.client.request({ t: 'send', id: opts.id ?? newId('m'), room: this.id, text }, true).then(ackOf)
  }

  /** Replaces the text of message `seq` (author or room admin). */
  edit (seq: number, text: string, opts: { id?: string } = {}): Promise<Ack> {
    return this.client.request({ t: 'edit', id: opts.id ?? newId('e'), room: this.id, target: seq, text }, true).then(ackOf)
  }

  /** Withdraws message `seq` (author or room admin). */
  delete (seq: number, opts: { id?: string } = {}): Promise<Ack> {
    return this.client.request({ t: 'delete', id: opts.id ?? newId('d'), room: this.id, target: seq }, true).then(ackOf)
  }

  /** Replaces this connection's presence state (kept across reconnects). */
  setPresence (state: unknown): void {
    this.state = state
    this.client.notify({ t: 'presence', room: this.id, state })
  }

  /** Typing indicator on or off. Call `typing(true)` again within the server's timeout (5 s) to keep it on. */
  typing (on: boolean): void {
    this.client.notify({ t: 'typing', room: this.id, typing: on })
  }

  /** A page of committed events: the newest `limit` before `before`, or the first `limit` after `after`. */
  async history (opts: { before?: number, after?: number, limit?: number } = {}): Promise<RoomEvent[]> {
    const m = await this.client._history({ t: 'history', room: this.id, ...opts })
    return m.events as RoomEvent[]
  }

  private deliver (e: RoomEvent): void {
    if (this.position !== null && e.seq <= this.position.seq) return // already seen
    if (this.position !== null && e.seq > this.position.seq + 1 && this.joining === null) {
      // A gap (should not happen): resume from what we have.
      this.rejoin()
      return
    }
    this.position = { epoch: e.epoch, seq: e.seq }
    this.emit('event', e)
    if (e.type === 'chat.message.sent') this.emit('message', e)
  }

  /** @internal */
  _frame (m: any): void {
    switch (m.t) {
      case 'joined': {
        if (m.recovered === true) {
          // Exactly the events after our position, in order.
          for (const e of m.events ?? []) this.deliver(e)
        } else {
          if (m.recovered === false) this.emit('reset', { reason: m.reason })
          // First join, or resume impossible: start at the room's current position.
          this.position = m.position
        }
        this.presence.clear()
        for (const p of m.presence ?? []) this.presence.set(p.user, p)
        this.typists = m.typing ?? []
        this.emit('presence', this.presence)
        this.emit('typing', this.typists)
        this.client._resendFor(this.id)
        // A call in progress before a reconnect or a move joins again (a new peer connection).
        this.callObj?._roomJoined()
        return
      }
      case 'event':
        if (this.joining === null) this.deliver(m.event)
        else {
          // Events racing a rejoin: the joined reply replays them in order; later ones pass the filter.
          const j = this.joining
          const deliver = (): void => this.deliver(m.event)
          void j.then(deliver, deliver)
        }
        return
      case 'presence':
        for (const p of m.set ?? []) this.presence.set(p.user, p)
        for (const u of m.gone ?? []) this.presence.delete(u)
        this.emit('presence', this.presence)
        return
      case 'typing':
        this.typists = m.users ?? []
        this.emit('typing', this.typists)
        return
      case 'room.closed':
        this.callObj?._roomLost()
        this.emit('closed', { code: m.code, message: m.message })
        if (this.joined) setTimeout(() => { if (this.joined && this.client.isConnected && this.joining === null) this.rejoin() }, 200)
    }
  }

  /** @internal */
  _disconnected (): void {
    this.typists = []
    this.callObj?._roomLost()
  }

  /** @internal */
  _reconnected (): void {
    // A join made while offline is already queued for this connection.
    if (this.joined && this.joining === null) this.rejoin()
  }

  /** Rejoins after a reconnect or `room.closed`; a refusal is reported, and retried when transient. */
  private rejoin (): void {
    this.sendJoin().catch((err: TandemError) => {
      if (!this.joined) return
      this.emit('error', err)
      const transient = ['unavailable', 'shutting_down', 'timeout', 'disconnected', 'limit'].includes(err.code)
      if (transient) {
        setTimeout(() => {
          if (this.joined && this.client.isConnected && this.joining === null) this.rejoin()
        }, 1000)
      } else {
        // Not coming back (forbidden, invalid): the room is left, and its queued sends fail.
        this.joined = false
        this.client._rejectFor(this.id, err)
        this.emit('closed', { code: err.code, message: err.message })
      }
    })
  }
}

/** How long a first `join()` keeps retrying while the room is moving between shards. */
const JOIN_RETRY_MS = 10_000

function ackOf (m: any): Ack {
  const a: Ack = { epoch: m.epoch, seq: m.seq }
  if (m.duplicate === true) a.duplicate = true
  return a
}

// ---------------------------------------------------------------------------------------------
// Calls: one RTCPeerConnection to the room's owner, which forwards media (an SFU)

/** What a published track carries. */
export type TrackKind = 'camera' | 'microphone' | 'screen' | 'screen-audio'
/** A subscriber's wanted quality of a video track (`off`: not forwarded). */
export type Quality = 'high' | 'medium' | 'low' | 'off'

/** A track published in the call. */
export interface TrackInfo {
  id: string
  participant: string
  user: string
  kind: TrackKind
  muted: boolean
  /** Simulcast layers (rids) the publisher sends. */
  layers: string[]
}

/** A participant (one per connection in the call). */
export interface Participant {
  id: string
  user: string
}

export interface CallOptions {
  /** The `RTCPeerConnection` constructor (defaults to the global one). */
  RTCPeerConnection?: any
  /** ICE servers besides the ones the server hands out. */
  iceServers?: any[]
  /** Subscribe to every track others publish, as they appear (default true). */
  autoSubscribe?: boolean
  /** Quality of new video subscriptions (default `high`). */
  quality?: Quality
  /** Camera simulcast encodings (default: three layers q/h/f at 1/4, 1/2 and full resolution; `false`: one). */
  simulcast?: boolean | any[]
}

/** A remote track received, as emitted with `track`. */
export interface RemoteTrack {
  info: TrackInfo
  /** The `MediaStreamTrack`. */
  track: any
  /** A `MediaStream` holding it (attach to a `<video>`/`<audio>` element). */
  stream: any
}

/** Refusals of `call.join` (or of the first offer) that a later attempt can overcome. */
const TRANSIENT_CALL_ERRORS = ['unavailable', 'shutting_down', 'timeout', 'disconnected', 'unknown_room', 'not_in_call', 'moved']
const RETRY_MIN_MS = 300
const RETRY_MAX_MS = 8000

const DEFAULT_SIMULCAST = [
  { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
  { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
  { rid: 'f', maxBitrate: 1_500_000 }
]

interface LocalTrack {
  kind: TrackKind
  track: any
  transceiver: any
  /** The server's id, once an answer accepted it. */
  id: string | null
  muted: boolean
}

interface Receiving {
  transceiver: any
  quality: Quality
  /** Named to the server in an accepted offer. */
  sent: boolean
  stream?: any
}

/**
 * A room's call: `join()`, `publish(track, kind)`, `unpublish(kind)`, `mute(kind, muted)`,
 * `setQuality(trackId, quality)`, `leave()`. Events: `joined` ({participant}), `participant.joined`
 * / `participant.left` (Participant, and `reason` for the latter), `track` (RemoteTrack: a remote
 * track's media arrived), `track.published` / `track.unpublished` (TrackInfo), `track.muted`
 * ({track, muted}), `speaker` (participant id or null), `state` (the peer connection's state),
 * `closed` ({code, message}: the server ended the call here; the client joins again by itself when
 * the code is `moved`, `shutting_down` or `timeout` and the room is still joined).
 *
 * Negotiation follows docs/protocol.md: the client always offers; one offer at a time.
 */
export class Call extends Emitter {
  /** This connection's participant id (null before `join()` completes). */
  participant: string | null = null
  /** Everyone in the call, this connection included. */
  readonly participants = new Map<string, Participant>()
  /** Every published track. */
  readonly tracks = new Map<string, TrackInfo>()
  /** The active speaker's participant id. */
  speaker: string | null = null
  /** The peer connection (for stats). */
  pc: any = null
  private active = false
  private starting: Promise<void> | null = null
  /** A restart was asked while a start ran: start again when it ends. */
  private restartPending = false
  /** Bumped by every `join()` and `leave()`: a start from an older generation gives up. */
  private gen = 0
  private retryTimer: ReturnType<typeof setTimeout> | null = null
  private retryDelay = RETRY_MIN_MS
  private readonly local = new Map<TrackKind, LocalTrack>()
  private readonly remote = new Map<string, Receiving>()
  private chain: Promise<void> = Promise.resolve()
  private readonly PC: any

  constructor (private readonly client: TandemClient, private readonly room: Room, private readonly opts: CallOptions) {
    super()
    this.PC = opts.RTCPeerConnection ?? (globalThis as any).RTCPeerConnection
  }

  /** Whether the application joined the call (and has not left it). */
  get isActive (): boolean {
    return this.active
  }

  /** Joins the call (the room must be joined). */
  async join (): Promise<void> {
    if (this.PC === undefined) throw new TandemError('bad_request', 'no RTCPeerConnection in this environment')
    this.active = true
    this.gen += 1
    await this.start()
  }

  private start (): Promise<void> {
    if (this.starting !== null) return this.starting
    const gen = this.gen
    const run = async (): Promise<void> => {
      const r = await this.client.request({ t: 'call.join', room: this.room.id })
      if (!this.active || gen !== this.gen) {
        // Left (or left and joined again) while joining: this participant is not wanted.
        await this.client.request({ t: 'call.leave', room: this.room.id }).catch(() => {})
        return
      }
      this.teardown()
      this.participant = r.participant
      this.participants.clear()
      for (const p of r.participants) this.participants.set(p.id, p)
      this.tracks.clear()
      for (const t of r.tracks) this.tracks.set(t.id, t)
      const pc = new this.PC({ iceServers: [...(r.ice_servers ?? []), ...(this.opts.iceServers ?? [])], bundlePolicy: 'max-bundle' })
      this.pc = pc
      pc.ontrack = (e: any) => this.onTrack(e)
      pc.onconnectionstatechange = () => this.emit('state', pc.connectionState)
      pc.onicecandidate = (e: any) => {
        if (e.candidate?.candidate) this.client.notify({ t: 'call.ice', room: this.room.id, candidate: e.candidate.candidate })
      }
      for (const l of this.local.values()) {
        l.id = null
        l.transceiver = this.addSender(l.kind, l.track)
      }
      this.emit('joined', { participant: this.participant })
      for (const p of this.participants.values()) if (p.id !== this.participant) this.emit('participant.joined', p)
      for (const t of this.tracks.values()) this.emit('track.published', t)
      await this.negotiate()
      this.retryDelay = RETRY_MIN_MS
    }
    const p = run()
      .catch(async (err) => {
        // A half-made start leaves nothing behind: no peer connection, no participant.
        if (this.pc !== null) {
          this.teardown()
          await this.client.request({ t: 'call.leave', room: this.room.id }).catch(() => {})
        }
        throw err
      })
      .finally(() => {
        this.starting = null
        if (this.restartPending) {
          this.restartPending = false
          this.scheduleRetry(0)
        }
      })
    this.starting = p
    return p
  }

  private addSender (kind: TrackKind, track: any): any {
    const init: any = { direction: 'sendonly' }
    if (kind === 'camera' && this.opts.simulcast !== false) {
      init.sendEncodings = Array.isArray(this.opts.simulcast) ? this.opts.simulcast : DEFAULT_SIMULCAST
    }
    return this.pc.addTransceiver(track, init)
  }

  /** Publishes a local `MediaStreamTrack` as `kind` (replacing an earlier one of that kind). Resolves with the track id. */
  async publish (track: any, kind: TrackKind): Promise<string> {
    const old = this.local.get(kind)
    if (old !== undefined) {
      await old.transceiver?.sender.replaceTrack(track)
      old.track = track
      if (old.id !== null) return old.id
    } else {
      this.local.set(kind, { kind, track, transceiver: this.pc !== null ? this.addSender(kind, track) : null, id: null, muted: false })
    }
    if (this.pc === null) return ''
    await this.negotiate()
    return this.local.get(kind)?.id ?? ''
  }

  /** Stops publishing `kind`. */
  async unpublish (kind: TrackKind): Promise<void> {
    const l = this.local.get(kind)
    if (l === undefined) return
    this.local.delete(kind)
    if (l.id !== null && this.pc !== null) {
      await this.client.request({ t: 'track.unpublish', room: this.room.id, track: l.id }).catch(() => {})
    }
    try { l.transceiver?.stop() } catch {}
    if (this.pc !== null) await this.negotiate()
  }

  /** Mutes (disables) or unmutes a published track and tells the call. */
  async mute (kind: TrackKind, muted: boolean): Promise<void> {
    const l = this.local.get(kind)
    if (l === undefined) return
    l.muted = muted
    l.track.enabled = !muted
    if (l.id !== null) await this.client.request({ t: 'track.mute', room: this.room.id, track: l.id, muted })
  }

  /** Changes the wanted quality of a subscribed track (`off` stops forwarding it). */
  async setQuality (trackId: string, quality: Quality): Promise<void> {
    const r = this.remote.get(trackId)
    if (r === undefined) return
    r.quality = quality
    if (r.sent) await this.client.request({ t: 'track.subscribe', room: this.room.id, track: trackId, quality })
  }

  /** Leaves the call (local tracks are kept: stop them yourself). */
  async leave (): Promise<void> {
    if (!this.active) return
    this.active = false
    this.gen += 1
    if (this.retryTimer !== null) clearTimeout(this.retryTimer)
    this.retryTimer = null
    this.teardown()
    if (this.client.isConnected) await this.client.request({ t: 'call.leave', room: this.room.id }).catch(() => {})
    this.participant = null
  }

  private teardown (): void {
    if (this.pc !== null) {
      try { this.pc.close() } catch {}
    }
    this.pc = null
    this.remote.clear()
  }

  /** One offer/answer round with the server, serialized with the others. */
  private negotiate (): Promise<void> {
    const next = this.chain.then(() => this.negotiateNow())
    this.chain = next.catch(() => {})
    return next
  }

  private async negotiateNow (): Promise<void> {
    const pc = this.pc
    if (pc === null) return
    const auto = this.opts.autoSubscribe !== false
    for (const t of this.tracks.values()) {
      if (t.participant === this.participant || this.remote.has(t.id) || !auto) continue
      const media = t.kind === 'camera' || t.kind === 'screen' ? 'video' : 'audio'
      const r: Receiving = { transceiver: pc.addTransceiver(media, { direction: 'recvonly' }), quality: this.opts.quality ?? 'high', sent: false }
      this.remote.set(t.id, r)
    }
    // Every receiver the server has not accepted yet is named (again) in this offer.
    const fresh: Array<[string, Receiving]> = [...this.remote].filter(([, r]) => !r.sent)
    for (const [id, r] of [...this.remote]) {
      if (!this.tracks.has(id)) {
        try { r.transceiver.stop() } catch {}
        this.remote.delete(id)
      }
    }
    // Nothing to send or receive yet: no offer (an empty one has no BUNDLE group).
    if (pc.getTransceivers().length === 0) return
    const offer = await pc.createOffer()
    await pc.setLocalDescription(offer)
    const publish = [...this.local.values()]
      .filter((l) => l.id === null && l.transceiver?.mid != null)
      .map((l) => ({ mid: l.transceiver.mid, kind: l.kind }))
    const subscribe = fresh
      .filter(([, r]) => r.transceiver.mid != null)
      .map(([id, r]) => ({ mid: r.transceiver.mid, track: id, quality: r.quality }))
    // A restart replaced the peer connection meanwhile: this offer is stale.
    if (this.pc !== pc) return
    let a: any
    try {
      a = await this.client.request({ t: 'call.offer', room: this.room.id, sdp: pc.localDescription.sdp, publish, subscribe })
    } catch (err: any) {
      if (err?.code === 'forbidden') {
        // Publishing without write access: the local tracks are dropped, so that later offers
        // (subscriptions) go through.
        for (const l of [...this.local.values()].filter((l) => l.id === null)) {
          this.local.delete(l.kind)
          try { l.transceiver?.stop() } catch {}
        }
      }
      throw err
    }
    if (this.pc !== pc) return
    await pc.setRemoteDescription({ type: 'answer', sdp: a.sdp })
    for (const l of this.local.values()) {
      if (l.id === null && l.transceiver?.mid != null) l.id = `${this.participant ?? ''}-${String(l.transceiver.mid)}`
    }
    for (const [, r] of fresh) r.sent = true
  }

  private onTrack (e: any): void {
    const mid = e.transceiver?.mid
    for (const [id, r] of this.remote) {
      if (r.transceiver.mid === mid) {
        const info = this.tracks.get(id)
        if (info === undefined) return
        const MS = (globalThis as any).MediaStream
        const stream = e.streams?.[0] ?? (MS !== undefined ? new MS([e.track]) : undefined)
        r.stream = stream
        this.emit('track', { info, track: e.track, stream } satisfies RemoteTrack)
        return
      }
    }
  }

  /** @internal the room was joined (again): a call in progress restarts on the (new) owner. */
  _roomJoined (): void {
    if (!this.active || this.pc !== null) return
    if (this.starting !== null) {
      this.restartPending = true
      return
    }
    this.start().catch((err) => {
      this.emit('error', err)
      // Not in the room yet (the move is still under way), or another transient refusal: one timer,
      // with backoff. A refusal that retrying cannot change ends the call here.
      if (TRANSIENT_CALL_ERRORS.includes(err?.code)) {
        this.scheduleRetry(this.retryDelay)
        this.retryDelay = Math.min(this.retryDelay * 2, RETRY_MAX_MS)
      } else {
        this.active = false
        this.emit('closed', { code: err?.code ?? 'error', message: String(err?.message ?? err) })
      }
    })
  }

  private scheduleRetry (delay: number): void {
    if (this.retryTimer !== null) return
    this.retryTimer = setTimeout(() => {
      this.retryTimer = null
      if (this.room.isJoined && this.client.isConnected) this._roomJoined()
    }, delay)
  }

  /** @internal the room's socket dropped or the room closed: the call ends here until the rejoin. */
  _roomLost (): void {
    if (this.pc !== null) {
      this.teardown()
      this.emit('closed', { code: 'moved', message: 'the room is being rejoined' })
    }
  }

  /** @internal */
  _frame (m: any): void {
    switch (m.t) {
      case 'call.participant.joined':
        this.participants.set(m.participant.id, m.participant)
        this.emit('participant.joined', m.participant)
        return
      case 'call.participant.left': {
        const p = this.participants.get(m.participant)
        this.participants.delete(m.participant)
        if (this.speaker === m.participant) this.speaker = null
        this.emit('participant.left', { ...(p ?? { id: m.participant, user: '' }), reason: m.reason })
        return
      }
      case 'track.published':
        this.tracks.set(m.track.id, m.track)
        this.emit('track.published', m.track)
        if (m.track.participant !== this.participant && this.opts.autoSubscribe !== false) void this.negotiate().catch((err) => this.emit('error', err))
        return
      case 'track.unpublished': {
        const t = this.tracks.get(m.track)
        this.tracks.delete(m.track)
        if (t !== undefined) this.emit('track.unpublished', t)
        if (this.remote.has(m.track)) void this.negotiate().catch((err) => this.emit('error', err))
        return
      }
      case 'track.muted': {
        const t = this.tracks.get(m.track)
        if (t !== undefined) t.muted = m.muted
        this.emit('track.muted', { track: m.track, muted: m.muted })
        return
      }
      case 'call.speaker':
        this.speaker = m.participant
        this.emit('speaker', m.participant)
        return
      case 'call.closed':
        this.teardown()
        this.emit('closed', { code: m.code, message: m.message })
        if (this.active && ['moved', 'shutting_down', 'timeout', 'unavailable'].includes(m.code)) {
          this.scheduleRetry(RETRY_MIN_MS)
        }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Documents: a Yjs provider over the shared socket

const MESSAGE_SYNC = 0
const MESSAGE_AWARENESS = 1
const MESSAGE_AUTH = 2
const MESSAGE_QUERY_AWARENESS = 3

/**
 * Keeps a Y.Doc (and its awareness) in sync with the server over the client's socket, with the
 * semantics of the y-websocket provider. Events: `synced` (true after the server's state arrived),
 * `status` ('connecting' | 'connected' | 'disconnected'), `closed` ({code, reason}: the server closed
 * the channel; the provider reopens it), `permission-denied` (reason).
 */
export class DocProvider extends Emitter {
  synced = false
  private open = false
  private destroyed = false
  private readonly prefix: Uint8Array
  private readonly onUpdate: (update: Uint8Array, origin: unknown) => void
  private readonly onAwareness: (changes: { added: number[], updated: number[], removed: number[] }, origin: unknown) => void

  constructor (
    private readonly client: TandemClient,
    readonly id: string,
    readonly doc: Y.Doc,
    readonly awareness: awarenessProtocol.Awareness,
    /** Whether this provider created `awareness` (and so destroys it, stopping its timer). */
    private readonly ownsAwareness = false
  ) {
    super()
    const enc = encoding.createEncoder()
    encoding.writeVarString(enc, id)
    this.prefix = encoding.toUint8Array(enc)
    this.onUpdate = (update, origin) => {
      if (origin === this) return
      const e = this.encoder()
      encoding.writeVarUint(e, MESSAGE_SYNC)
      syncProtocol.writeUpdate(e, update)
      this.sendBinary(e)
    }
    this.onAwareness = ({ added, updated, removed }, _origin) => {
      const changed = added.concat(updated, removed)
      if (!changed.includes(this.doc.clientID)) return
      const e = this.encoder()
      encoding.writeVarUint(e, MESSAGE_AWARENESS)
      encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]))
      this.sendBinary(e)
    }
    doc.on('update', this.onUpdate)
    awareness.on('update', this.onAwareness)
    if (client.isConnected) this.openChannel()
  }

  private encoder (): encoding.Encoder {
    const e = encoding.createEncoder()
    encoding.writeUint8Array(e, this.prefix)
    return e
  }

  private sendBinary (e: encoding.Encoder): void {
    if (this.open) this.client._sendBinary(encoding.toUint8Array(e))
  }

  private openChannel (): void {
    if (this.destroyed) return
    this.emit('status', 'connecting')
    this.client.request({ t: 'doc.open', doc: this.id }).catch((err: Error) => {
      this.emit('error', err)
    })
  }

  /** @internal the server opened the channel: its sync messages follow this reply immediately. */
  _opened (): void {
    if (this.destroyed) return
    this.open = true
    this.emit('status', 'connected')
    // Our state vector (the server answers with what we lack) and our awareness state.
    const e = this.encoder()
    encoding.writeVarUint(e, MESSAGE_SYNC)
    syncProtocol.writeSyncStep1(e, this.doc)
    this.sendBinary(e)
    if (this.awareness.getLocalState() !== null) {
      const a = this.encoder()
      encoding.writeVarUint(a, MESSAGE_AWARENESS)
      encoding.writeVarUint8Array(a, awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]))
      this.sendBinary(a)
    }
  }

  /** @internal a y-websocket message for this document */
  _message (data: Uint8Array): void {
    const decoder = decoding.createDecoder(data)
    const type = decoding.readVarUint(decoder)
    switch (type) {
      case MESSAGE_SYNC: {
        const e = this.encoder()
        encoding.writeVarUint(e, MESSAGE_SYNC)
        const kind = syncProtocol.readSyncMessage(decoder, e, this.doc, this)
        // Reply (sync step 2) only when the message asked for one.
        if (kind === syncProtocol.messageYjsSyncStep1) this.sendBinary(e)
        if (kind === syncProtocol.messageYjsSyncStep2 && !this.synced) {
          this.synced = true
          this.emit('synced', true)
        }
        return
      }
      case MESSAGE_AWARENESS:
        awarenessProtocol.applyAwarenessUpdate(this.awareness, decoding.readVarUint8Array(decoder), this)
        return
      case MESSAGE_AUTH:
        decoding.readVarUint(decoder)
        this.emit('permission-denied', decoding.readVarString(decoder))
        return
      case MESSAGE_QUERY_AWARENESS: {
        const e = this.encoder()
        encoding.writeVarUint(e, MESSAGE_AWARENESS)
        encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(this.awareness, Array.from(this.awareness.getStates().keys())))
        this.sendBinary(e)
      }
    }
  }

  /** @internal the server closed the channel (resync needed, store trouble, shutdown) */
  _closed (m: any): void {
    this.open = false
    this.synced = false
    this.emit('closed', { code: m.code, reason: m.reason })
    // Remote awareness states died with the channel.
    const others = Array.from(this.awareness.getStates().keys()).filter((c) => c !== this.doc.clientID)
    awarenessProtocol.removeAwarenessStates(this.awareness, others, this)
    if (!this.destroyed && m.code !== 1001) {
      setTimeout(() => { if (!this.destroyed && this.client.isConnected) this.openChannel() }, 100)
    }
  }

  /** @internal */
  _disconnected (): void {
    this.open = false
    this.synced = false
    this.emit('status', 'disconnected')
    const others = Array.from(this.awareness.getStates().keys()).filter((c) => c !== this.doc.clientID)
    awarenessProtocol.removeAwarenessStates(this.awareness, others, this)
  }

  /** @internal */
  _reconnected (): void {
    this.openChannel()
  }

  /** Stops syncing: announces that this client's awareness is gone and closes the channel. */
  destroy (): void {
    if (this.destroyed) return
    if (this.open) {
      awarenessProtocol.removeAwarenessStates(this.awareness, [this.doc.clientID], 'destroy')
      const a = this.encoder()
      encoding.writeVarUint(a, MESSAGE_AWARENESS)
      encoding.writeVarUint8Array(a, awarenessProtocol.encodeAwarenessUpdate(this.awareness, [this.doc.clientID]))
      this.sendBinary(a)
      this.client.request({ t: 'doc.close', doc: this.id }).catch(() => {})
    }
    this.destroyed = true
    this.open = false
    this.doc.off('update', this.onUpdate)
    this.awareness.off('update', this.onAwareness)
    if (this.ownsAwareness) this.awareness.destroy()
    this.client._forgetDoc(this.id)
  }
}
