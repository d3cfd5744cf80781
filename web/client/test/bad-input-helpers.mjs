import WebSocket from 'ws'
export { dumpLogsOnFailure } from '../../test/server.mjs'

/** The HTTP status of a /v1 upgrade attempt (101 when it succeeds). */
export function tryUpgradeV1 (server, tok) {
  const url = server.url + '/v1' + (tok ? '?token=' + encodeURIComponent(tok) : '')
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url)
    ws.once('open', () => { ws.close(); resolve(101) })
    ws.once('unexpected-response', (_req, res) => { res.resume(); resolve(res.statusCode) })
    ws.once('error', (e) => reject(e))
  })
}
