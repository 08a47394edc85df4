// A TLS front for a plaintext server, for tests: tansu 0.6 cannot serve TLS itself (its
// --cert and --key options conflict), so the Kafka-over-TLS test puts this in front of it, as
// a TLS-terminating load balancer would stand in front of brokers.
//
//   node scripts/tls_terminator.js CERT_PEM KEY_PEM TARGET_HOST:PORT
//
// Listens on a free port of 127.0.0.1 only, prints "listening PORT" once it accepts, and pipes
// every decrypted connection to the target. Stop it by its process id.
'use strict';
const fs = require('fs');
const net = require('net');
const tls = require('tls');

const [certPath, keyPath, target] = process.argv.slice(2);
if (!certPath || !keyPath || !target) {
  console.error('usage: tls_terminator.js CERT_PEM KEY_PEM TARGET_HOST:PORT');
  process.exit(2);
}
const separator = target.lastIndexOf(':');
const host = target.slice(0, separator);
const port = Number(target.slice(separator + 1));

const server = tls.createServer(
  { cert: fs.readFileSync(certPath), key: fs.readFileSync(keyPath) },
  (client) => {
    const upstream = net.connect({ host, port });
    client.pipe(upstream).pipe(client);
    const close = () => {
      client.destroy();
      upstream.destroy();
    };
    client.on('error', close);
    upstream.on('error', close);
    client.on('close', close);
    upstream.on('close', close);
  },
);
// A failed handshake (a client that does not trust the certificate) is the client's story.
server.on('tlsClientError', () => {});
server.listen(0, '127.0.0.1', () => {
  console.log(`listening ${server.address().port}`);
});
