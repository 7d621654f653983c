// broker-client.js: this broker's protocol over WebSocket (--ws-port), for
// browsers; a plain script, no build step. docs/websocket.md has the guide.
//
//   const client = new BrokerClient("ws://localhost:8080", {user, password});
//   const sub = await client.subscribe(["orders.>"], (message) => {
//     console.log(message.topic, message.offset, message.text(), message.headers);
//   }, {start: "beginning"});        // acked once the handler returns (nacked if it throws)
//   const offset = await client.publish("orders.eu", "one pizza", {"Content-Type": "text/plain"});
//   client.close();
//
// Each of subscribe() and publish() uses a WebSocket of its own (the
// broker's connections have one role each), with the extensions agreed in
// Hello: prefetch and acks by id, confirms, patterns, groups, headers.
"use strict";

(function (global) {
  const HELLO = 16, SUBSCRIBE = 1, PUBLISH = 3, SUBSCRIBED = 1, UNSUBSCRIBED = 2,
    ERROR = 3, CONFIRMED = 17, DELIVERY = 18, ACK = 20, NACK = 21, HEADERS = 65534;
  const STARTS = {beginning: 0, current: 1, from: 2};
  const SUBPROTOCOL = "twisted-broker";
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  function frame(...parts) {
    const size = parts.reduce((total, part) => total + part.length, 0);
    const out = new Uint8Array(size);
    let at = 0;
    for (const part of parts) { out.set(part, at); at += part.length; }
    return out;
  }
  function u16(value) { const b = new Uint8Array(2); new DataView(b.buffer).setUint16(0, value); return b; }
  function u32(value) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, value); return b; }
  function bytes(data) { return typeof data === "string" ? encoder.encode(data) : new Uint8Array(data); }

  function encodeHeaders(headers) {
    const pairs = headers instanceof Map ? [...headers] : Object.entries(headers || {});
    const parts = [u16(pairs.length)];
    for (const [name, value] of pairs) {
      const rawName = encoder.encode(name), rawValue = encoder.encode(String(value));
      parts.push(new Uint8Array([rawName.length]), rawName, u16(rawValue.length), rawValue);
    }
    return frame(...parts);
  }

  function decodeHeaders(block) {
    const view = new DataView(block.buffer, block.byteOffset, block.byteLength);
    const headers = new Map();
    let at = 2;
    for (let i = view.getUint16(0); i > 0; i--) {
      const nameLength = block[at];
      const name = decoder.decode(block.subarray(at + 1, at + 1 + nameLength));
      const valueLength = view.getUint16(at + 1 + nameLength);
      const start = at + 3 + nameLength;
      if (!headers.has(name.toLowerCase())) {
        headers.set(name.toLowerCase(), decoder.decode(block.subarray(start, start + valueLength)));
      }
      at = start + valueLength;
    }
    return headers;
  }

  class BrokerError extends Error {}

  // One WebSocket, its Hello, and the frames the broker sends, cut whole
  // however WebSocket messages split them.
  class Connection {
    constructor(url, hello, onFrame, onClose) {
      this.buffer = new Uint8Array(0);
      this.onFrame = onFrame;
      this.socket = new WebSocket(url, [SUBPROTOCOL]);
      this.socket.binaryType = "arraybuffer";
      this.ready = new Promise((resolve, reject) => {
        this.answered = resolve;
        this.socket.onerror = () => reject(new BrokerError(`cannot reach ${url}`));
      });
      this.socket.onopen = () => this.send(null, hello);
      this.socket.onmessage = (event) => this.received(new Uint8Array(event.data));
      this.socket.onclose = (event) => onClose(new BrokerError(`connection closed (${event.code})`));
    }
    send(raw, hello) {
      if (hello !== undefined) {
        const body = encoder.encode(JSON.stringify(hello));
        raw = frame(u16(HELLO), u32(body.length), body);
      }
      this.socket.send(raw);
    }
    received(data) {
      let buffer = this.buffer.length ? frame(this.buffer, data) : data;
      let at = 0;
      for (;;) {
        const used = this.cut(buffer, at);
        if (!used) break;
        at += used;
      }
      this.buffer = buffer.slice(at);
    }
    // Bytes of the whole frame at `at` (handed to onFrame), or 0 if not whole yet.
    cut(buffer, at) {
      const left = buffer.length - at;
      if (left < 2) return 0;
      const view = new DataView(buffer.buffer, buffer.byteOffset + at, left);
      const kind = view.getUint16(0);
      if (kind === HELLO || kind === HEADERS) {
        if (left < 6) return 0;
        const size = 6 + view.getUint32(2);
        if (left < size) return 0;
        const body = buffer.subarray(at + 6, at + size);
        if (kind === HELLO) this.answered(JSON.parse(decoder.decode(body)));
        else this.onFrame({kind, headers: decodeHeaders(body)});
        return size;
      }
      if (kind === SUBSCRIBED || kind === UNSUBSCRIBED) { this.onFrame({kind}); return 2; }
      if (kind === ERROR) {
        if (left < 4) return 0;
        const size = 4 + view.getUint16(2);
        if (left < size) return 0;
        this.onFrame({kind, text: decoder.decode(buffer.subarray(at + 4, at + size))});
        return size;
      }
      if (kind === CONFIRMED) {
        if (left < 14) return 0;
        this.onFrame({kind, count: view.getUint32(2), first: Number(view.getBigUint64(6))});
        return 14;
      }
      if (kind === DELIVERY) {
        if (left < 4) return 0;
        const topicEnd = 4 + view.getUint16(2);
        if (left < topicEnd + 18) return 0;
        const size = topicEnd + 18 + view.getUint32(topicEnd + 14);
        if (left < size) return 0;
        this.onFrame({
          kind,
          topic: decoder.decode(buffer.subarray(at + 4, at + topicEnd)),
          offset: Number(view.getBigUint64(topicEnd)),
          attempt: view.getUint16(topicEnd + 8),
          id: view.getUint32(topicEnd + 10),
          data: buffer.slice(at + topicEnd + 18, at + size),
        });
        return size;
      }
      this.socket.close(4000, `unexpected frame ${kind}`);
      return 0;
    }
    close() { this.socket.close(1000); }
  }

  class Message {
    constructor(delivery, headers) {
      this.topic = delivery.topic;
      this.offset = delivery.offset;
      this.attempt = delivery.attempt;
      this.data = delivery.data;
      this.headers = headers || new Map();
    }
    text() { return decoder.decode(this.data); }
  }

  class BrokerClient {
    constructor(url, options = {}) {
      this.url = url;
      this.credentials = options.user !== undefined
        ? {user: options.user, password: options.password} : {};
      this.publisher = null;
      this.subscribers = [];
    }

    // Subscribe to `topics` (names, patterns, $share/GROUP/TOPIC); resolves
    // once the broker answered Subscribed.
    async subscribe(topics, onMessage, options = {}) {
      let headers = null;
      let subscribed, failed;
      const answered = new Promise((resolve, reject) => { subscribed = resolve; failed = reject; });
      const connection = new Connection(this.url, {
        version: 1, prefetch: options.prefetch || 64, patterns: true, groups: true, headers: true,
        ...this.credentials,
      }, (got) => {
        if (got.kind === HEADERS) { headers = got.headers; return; }
        if (got.kind === SUBSCRIBED) { subscribed(); return; }
        if (got.kind === ERROR) { failed(new BrokerError(got.text)); return; }
        if (got.kind !== DELIVERY) return;
        const message = new Message(got, headers);
        headers = null;
        Promise.resolve().then(() => onMessage(message)).then(
          () => connection.send(frame(u16(ACK), u32(got.id))),
          () => connection.send(frame(u16(NACK), u32(got.id))),
        );
      }, (error) => failed(error));
      this.subscribers.push(connection);
      await connection.ready;
      const names = encoder.encode(JSON.stringify(topics));
      const start = STARTS[options.start || "current"];
      const parts = [u16(SUBSCRIBE), u32(names.length), names, u16(start)];
      if (start === STARTS.from) parts.push(u16(options.offset || 0));
      connection.send(frame(...parts));
      await answered;
      return {close: () => connection.close()};
    }

    // Publish; resolves with the offset the broker stored it at (a confirm).
    async publish(topic, data, headers) {
      if (!this.publisher) this.publisher = this.openPublisher();
      const publisher = await this.publisher;
      const name = encoder.encode("topic:" + topic);
      const payload = bytes(data);
      const parts = [];
      if (headers && Object.keys(headers).length) {
        const block = encodeHeaders(headers);
        parts.push(u16(HEADERS), u32(block.length), block);
      }
      parts.push(u16(name.length), name, u32(payload.length), payload);
      return new Promise((resolve, reject) => {
        publisher.waiting.push({resolve, reject});
        publisher.connection.send(frame(...parts));
      });
    }

    async openPublisher() {
      const waiting = [];
      const connection = new Connection(this.url, {
        version: 1, confirms: true, headers: true, ...this.credentials,
      }, (got) => {
        if (got.kind === CONFIRMED) {
          for (let n = 0; n < got.count; n++) waiting.shift().resolve(got.first + n);
        } else if (got.kind === ERROR && waiting.length) {
          waiting.shift().reject(new BrokerError(got.text));
        }
      }, (error) => { while (waiting.length) waiting.shift().reject(error); });
      await connection.ready;
      connection.send(u16(PUBLISH));
      return {connection, waiting};
    }

    close() {
      for (const connection of this.subscribers) connection.close();
      this.subscribers = [];
      if (this.publisher) this.publisher.then((p) => p.connection.close());
      this.publisher = null;
    }
  }

  global.BrokerClient = BrokerClient;
  global.BrokerError = BrokerError;
})(typeof window !== "undefined" ? window : globalThis);
