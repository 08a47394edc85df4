// Node preload: every server listens on 127.0.0.1, whatever host the program asks for
// (kinesalite hard-codes the wildcard address).
const net = require('net');
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'object' && args[0] !== null && !Array.isArray(args[0])) {
    args[0] = Object.assign({}, args[0], { host: '127.0.0.1' });
  } else if (typeof args[0] === 'number' || typeof args[0] === 'string') {
    const callback = typeof args[args.length - 1] === 'function' ? args.pop() : undefined;
    const rest = [args[0], '127.0.0.1'];
    if (typeof args[2] === 'number') rest.push(args[2]); // backlog
    if (callback) rest.push(callback);
    return listen.apply(this, rest);
  }
  return listen.apply(this, args);
};
