// cloudevents_receiver.js -- a webhook receiver built on the CloudEvents
// JavaScript SDK, for 105_cloudevents_http.pl.
//
// Listens on 127.0.0.1 (a free port), prints "port N" once listening, then
// one JSON line per request received:
//   {path, headers, body_b64, event: {specversion, id, source, type, time,
//    subject, datacontenttype, data_kind, data | data_b64, extensions},
//    error}
// where event is what the SDK's HTTP binding (HTTP.toEvent) made of the
// request, in binary or structured content mode alike.  A request the SDK
// cannot read is answered 400 (and has "error"), every other one 200.
// Exits when its standard input closes (the test ended).
//
// The SDK is the npm package "cloudevents", installed by the test into a
// directory of its own (NODE_PATH names its node_modules).

'use strict';

const http = require('http');
const { HTTP } = require('cloudevents');

// Content types whose bodies a receiver hands the SDK as text.
function isTextual(contentType) {
    const type = (contentType || '').toLowerCase();
    return type.startsWith('text/') || type.startsWith('application/json') ||
        type.startsWith('application/cloudevents') || type.includes('+json');
}

// What the SDK read, in plain JSON.
function describe(event) {
    const out = { extensions: {} };
    const known = ['specversion', 'id', 'source', 'type', 'time', 'subject',
        'datacontenttype', 'data', 'data_base64'];
    for (const name of known.slice(0, 7)) {
        out[name] = event[name];
    }
    for (const name of Object.keys(event)) {
        if (!known.includes(name) && typeof event[name] !== 'function') {
            out.extensions[name] = event[name];
        }
    }
    const data = event.data;
    if (data === undefined || data === null) {
        out.data_kind = 'none';
    } else if (Buffer.isBuffer(data) || ArrayBuffer.isView(data)) {
        // data_base64 comes back as a typed array of the bytes.
        out.data_kind = 'bytes';
        out.data_b64 = Buffer.from(Array.from(data)).toString('base64');
    } else if (typeof data === 'string') {
        out.data_kind = 'string';
        out.data = data;
    } else {
        out.data_kind = 'json';
        out.data = data;
    }
    return out;
}

const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
        const raw = Buffer.concat(chunks);
        const body = isTextual(req.headers['content-type']) ? raw.toString('utf8') : raw;
        const record = { path: req.url, headers: req.headers, body_b64: raw.toString('base64') };
        let status = 200;
        try {
            record.event = describe(HTTP.toEvent({ headers: req.headers, body }));
        } catch (err) {
            record.error = String((err && err.message) || err);
            status = 400;
        }
        res.writeHead(status, { 'content-type': 'text/plain' });
        res.end(record.error || 'ok');
        process.stdout.write(JSON.stringify(record) + '\n');
    });
});

server.listen(0, '127.0.0.1', () => {
    process.stdout.write('port ' + server.address().port + '\n');
});

process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
