// Built from clients/js by `npm run bundle` (esbuild); do not edit.

// src/bytes.ts
var utf8 = new TextEncoder();
var utf8Decoder = new TextDecoder("utf-8", { fatal: true });
function concat(...parts) {
  let size = 0;
  for (const p of parts) size += p.length;
  const out = new Uint8Array(size);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
function equal(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
var B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
var B64URL_INDEX = new Map([...B64URL].map((c, i) => [c, i]));
function toBase64Url(b) {
  let s = "";
  for (let i = 0; i < b.length; i += 3) {
    const n = b[i] << 16 | (b[i + 1] ?? 0) << 8 | (b[i + 2] ?? 0);
    const chars = Math.min(4, Math.ceil((b.length - i) * 8 / 6));
    for (let j = 0; j < chars; j++) s += B64URL[n >> 18 - 6 * j & 63];
  }
  return s;
}
function fromBase64Url(text) {
  const s = text.replace(/=+$/, "");
  if (s.length % 4 === 1 || text.length !== s.length && text.length % 4 !== 0) {
    throw new TypeError("not base64url");
  }
  const out = new Uint8Array(Math.floor(s.length * 6 / 8));
  let acc = 0;
  let bits = 0;
  let at = 0;
  for (const c of s) {
    const v = B64URL_INDEX.get(c);
    if (v === void 0) throw new TypeError("not base64url");
    acc = (acc << 6 | v) & 65535;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = acc >> bits & 255;
    }
  }
  return out;
}

// node_modules/@msgpack/msgpack/dist.esm/utils/utf8.mjs
function utf8Count(str2) {
  const strLength = str2.length;
  let byteLength = 0;
  let pos = 0;
  while (pos < strLength) {
    let value = str2.charCodeAt(pos++);
    if ((value & 4294967168) === 0) {
      byteLength++;
      continue;
    } else if ((value & 4294965248) === 0) {
      byteLength += 2;
    } else {
      if (value >= 55296 && value <= 56319) {
        if (pos < strLength) {
          const extra = str2.charCodeAt(pos);
          if ((extra & 64512) === 56320) {
            ++pos;
            value = ((value & 1023) << 10) + (extra & 1023) + 65536;
          }
        }
      }
      if ((value & 4294901760) === 0) {
        byteLength += 3;
      } else {
        byteLength += 4;
      }
    }
  }
  return byteLength;
}
function utf8EncodeJs(str2, output, outputOffset) {
  const strLength = str2.length;
  let offset = outputOffset;
  let pos = 0;
  while (pos < strLength) {
    let value = str2.charCodeAt(pos++);
    if ((value & 4294967168) === 0) {
      output[offset++] = value;
      continue;
    } else if ((value & 4294965248) === 0) {
      output[offset++] = value >> 6 & 31 | 192;
    } else {
      if (value >= 55296 && value <= 56319) {
        if (pos < strLength) {
          const extra = str2.charCodeAt(pos);
          if ((extra & 64512) === 56320) {
            ++pos;
            value = ((value & 1023) << 10) + (extra & 1023) + 65536;
          }
        }
      }
      if ((value & 4294901760) === 0) {
        output[offset++] = value >> 12 & 15 | 224;
        output[offset++] = value >> 6 & 63 | 128;
      } else {
        output[offset++] = value >> 18 & 7 | 240;
        output[offset++] = value >> 12 & 63 | 128;
        output[offset++] = value >> 6 & 63 | 128;
      }
    }
    output[offset++] = value & 63 | 128;
  }
}
var sharedTextEncoder = new TextEncoder();
var TEXT_ENCODER_THRESHOLD = 50;
function utf8EncodeTE(str2, output, outputOffset) {
  sharedTextEncoder.encodeInto(str2, output.subarray(outputOffset));
}
function utf8Encode(str2, output, outputOffset) {
  if (str2.length > TEXT_ENCODER_THRESHOLD) {
    utf8EncodeTE(str2, output, outputOffset);
  } else {
    utf8EncodeJs(str2, output, outputOffset);
  }
}
var CHUNK_SIZE = 4096;
function utf8DecodeJs(bytes, inputOffset, byteLength) {
  let offset = inputOffset;
  const end = offset + byteLength;
  const units = [];
  let result = "";
  while (offset < end) {
    const byte1 = bytes[offset++];
    if ((byte1 & 128) === 0) {
      units.push(byte1);
    } else if ((byte1 & 224) === 192) {
      const byte2 = bytes[offset++] & 63;
      units.push((byte1 & 31) << 6 | byte2);
    } else if ((byte1 & 240) === 224) {
      const byte2 = bytes[offset++] & 63;
      const byte3 = bytes[offset++] & 63;
      units.push((byte1 & 31) << 12 | byte2 << 6 | byte3);
    } else if ((byte1 & 248) === 240) {
      const byte2 = bytes[offset++] & 63;
      const byte3 = bytes[offset++] & 63;
      const byte4 = bytes[offset++] & 63;
      let unit = (byte1 & 7) << 18 | byte2 << 12 | byte3 << 6 | byte4;
      if (unit > 65535) {
        unit -= 65536;
        units.push(unit >>> 10 & 1023 | 55296);
        unit = 56320 | unit & 1023;
      }
      units.push(unit);
    } else {
      units.push(byte1);
    }
    if (units.length >= CHUNK_SIZE) {
      result += String.fromCharCode(...units);
      units.length = 0;
    }
  }
  if (units.length > 0) {
    result += String.fromCharCode(...units);
  }
  return result;
}
var sharedTextDecoder = new TextDecoder();
var TEXT_DECODER_THRESHOLD = 200;
function utf8DecodeTD(bytes, inputOffset, byteLength) {
  const stringBytes = bytes.subarray(inputOffset, inputOffset + byteLength);
  return sharedTextDecoder.decode(stringBytes);
}
function utf8Decode(bytes, inputOffset, byteLength) {
  if (byteLength > TEXT_DECODER_THRESHOLD) {
    return utf8DecodeTD(bytes, inputOffset, byteLength);
  } else {
    return utf8DecodeJs(bytes, inputOffset, byteLength);
  }
}

// node_modules/@msgpack/msgpack/dist.esm/ExtData.mjs
var ExtData = class {
  type;
  data;
  constructor(type, data) {
    this.type = type;
    this.data = data;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/DecodeError.mjs
var DecodeError = class _DecodeError extends Error {
  constructor(message) {
    super(message);
    const proto = Object.create(_DecodeError.prototype);
    Object.setPrototypeOf(this, proto);
    Object.defineProperty(this, "name", {
      configurable: true,
      enumerable: false,
      value: _DecodeError.name
    });
  }
};

// node_modules/@msgpack/msgpack/dist.esm/utils/int.mjs
var UINT32_MAX = 4294967295;
function setUint64(view, offset, value) {
  const high = value / 4294967296;
  const low = value;
  view.setUint32(offset, high);
  view.setUint32(offset + 4, low);
}
function setInt64(view, offset, value) {
  const high = Math.floor(value / 4294967296);
  const low = value;
  view.setUint32(offset, high);
  view.setUint32(offset + 4, low);
}
function getInt64(view, offset) {
  const high = view.getInt32(offset);
  const low = view.getUint32(offset + 4);
  return high * 4294967296 + low;
}
function getUint64(view, offset) {
  const high = view.getUint32(offset);
  const low = view.getUint32(offset + 4);
  return high * 4294967296 + low;
}

// node_modules/@msgpack/msgpack/dist.esm/timestamp.mjs
var EXT_TIMESTAMP = -1;
var TIMESTAMP32_MAX_SEC = 4294967296 - 1;
var TIMESTAMP64_MAX_SEC = 17179869184 - 1;
function encodeTimeSpecToTimestamp({ sec, nsec }) {
  if (sec >= 0 && nsec >= 0 && sec <= TIMESTAMP64_MAX_SEC) {
    if (nsec === 0 && sec <= TIMESTAMP32_MAX_SEC) {
      const rv = new Uint8Array(4);
      const view = new DataView(rv.buffer);
      view.setUint32(0, sec);
      return rv;
    } else {
      const secHigh = sec / 4294967296;
      const secLow = sec & 4294967295;
      const rv = new Uint8Array(8);
      const view = new DataView(rv.buffer);
      view.setUint32(0, nsec << 2 | secHigh & 3);
      view.setUint32(4, secLow);
      return rv;
    }
  } else {
    const rv = new Uint8Array(12);
    const view = new DataView(rv.buffer);
    view.setUint32(0, nsec);
    setInt64(view, 4, sec);
    return rv;
  }
}
function encodeDateToTimeSpec(date) {
  const msec = date.getTime();
  const sec = Math.floor(msec / 1e3);
  const nsec = (msec - sec * 1e3) * 1e6;
  const nsecInSec = Math.floor(nsec / 1e9);
  return {
    sec: sec + nsecInSec,
    nsec: nsec - nsecInSec * 1e9
  };
}
function encodeTimestampExtension(object) {
  if (object instanceof Date) {
    const timeSpec = encodeDateToTimeSpec(object);
    return encodeTimeSpecToTimestamp(timeSpec);
  } else {
    return null;
  }
}
function decodeTimestampToTimeSpec(data) {
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  switch (data.byteLength) {
    case 4: {
      const sec = view.getUint32(0);
      const nsec = 0;
      return { sec, nsec };
    }
    case 8: {
      const nsec30AndSecHigh2 = view.getUint32(0);
      const secLow32 = view.getUint32(4);
      const sec = (nsec30AndSecHigh2 & 3) * 4294967296 + secLow32;
      const nsec = nsec30AndSecHigh2 >>> 2;
      return { sec, nsec };
    }
    case 12: {
      const sec = getInt64(view, 4);
      const nsec = view.getUint32(0);
      return { sec, nsec };
    }
    default:
      throw new DecodeError(`Unrecognized data size for timestamp (expected 4, 8, or 12): ${data.length}`);
  }
}
function decodeTimestampExtension(data) {
  const timeSpec = decodeTimestampToTimeSpec(data);
  return new Date(timeSpec.sec * 1e3 + timeSpec.nsec / 1e6);
}
var timestampExtension = {
  type: EXT_TIMESTAMP,
  encode: encodeTimestampExtension,
  decode: decodeTimestampExtension
};

// node_modules/@msgpack/msgpack/dist.esm/ExtensionCodec.mjs
var ExtensionCodec = class _ExtensionCodec {
  static defaultCodec = new _ExtensionCodec();
  // ensures ExtensionCodecType<X> matches ExtensionCodec<X>
  // this will make type errors a lot more clear
  // eslint-disable-next-line @typescript-eslint/naming-convention
  __brand;
  // built-in extensions
  builtInEncoders = [];
  builtInDecoders = [];
  // custom extensions
  encoders = [];
  decoders = [];
  constructor() {
    this.register(timestampExtension);
  }
  register({ type, encode, decode }) {
    if (type >= 0) {
      this.encoders[type] = encode;
      this.decoders[type] = decode;
    } else {
      const index = -1 - type;
      this.builtInEncoders[index] = encode;
      this.builtInDecoders[index] = decode;
    }
  }
  tryToEncode(object, context) {
    for (let i = 0; i < this.builtInEncoders.length; i++) {
      const encodeExt = this.builtInEncoders[i];
      if (encodeExt != null) {
        const data = encodeExt(object, context);
        if (data != null) {
          const type = -1 - i;
          return new ExtData(type, data);
        }
      }
    }
    for (let i = 0; i < this.encoders.length; i++) {
      const encodeExt = this.encoders[i];
      if (encodeExt != null) {
        const data = encodeExt(object, context);
        if (data != null) {
          const type = i;
          return new ExtData(type, data);
        }
      }
    }
    if (object instanceof ExtData) {
      return object;
    }
    return null;
  }
  decode(data, type, context) {
    const decodeExt = type < 0 ? this.builtInDecoders[-1 - type] : this.decoders[type];
    if (decodeExt) {
      return decodeExt(data, type, context);
    } else {
      return new ExtData(type, data);
    }
  }
};

// node_modules/@msgpack/msgpack/dist.esm/utils/typedArrays.mjs
function isArrayBufferLike(buffer) {
  return buffer instanceof ArrayBuffer || typeof SharedArrayBuffer !== "undefined" && buffer instanceof SharedArrayBuffer;
}
function ensureUint8Array(buffer) {
  if (buffer instanceof Uint8Array) {
    return buffer;
  } else if (ArrayBuffer.isView(buffer)) {
    return new Uint8Array(buffer.buffer, buffer.byteOffset, buffer.byteLength);
  } else if (isArrayBufferLike(buffer)) {
    return new Uint8Array(buffer);
  } else {
    return Uint8Array.from(buffer);
  }
}

// node_modules/@msgpack/msgpack/dist.esm/Encoder.mjs
var DEFAULT_MAX_DEPTH = 100;
var DEFAULT_INITIAL_BUFFER_SIZE = 2048;
var Encoder = class _Encoder {
  extensionCodec;
  context;
  useBigInt64;
  maxDepth;
  initialBufferSize;
  sortKeys;
  forceFloat32;
  ignoreUndefined;
  forceIntegerToFloat;
  pos;
  view;
  bytes;
  entered = false;
  constructor(options) {
    this.extensionCodec = options?.extensionCodec ?? ExtensionCodec.defaultCodec;
    this.context = options?.context;
    this.useBigInt64 = options?.useBigInt64 ?? false;
    this.maxDepth = options?.maxDepth ?? DEFAULT_MAX_DEPTH;
    this.initialBufferSize = options?.initialBufferSize ?? DEFAULT_INITIAL_BUFFER_SIZE;
    this.sortKeys = options?.sortKeys ?? false;
    this.forceFloat32 = options?.forceFloat32 ?? false;
    this.ignoreUndefined = options?.ignoreUndefined ?? false;
    this.forceIntegerToFloat = options?.forceIntegerToFloat ?? false;
    this.pos = 0;
    this.view = new DataView(new ArrayBuffer(this.initialBufferSize));
    this.bytes = new Uint8Array(this.view.buffer);
  }
  clone() {
    return new _Encoder({
      extensionCodec: this.extensionCodec,
      context: this.context,
      useBigInt64: this.useBigInt64,
      maxDepth: this.maxDepth,
      initialBufferSize: this.initialBufferSize,
      sortKeys: this.sortKeys,
      forceFloat32: this.forceFloat32,
      ignoreUndefined: this.ignoreUndefined,
      forceIntegerToFloat: this.forceIntegerToFloat
    });
  }
  reinitializeState() {
    this.pos = 0;
  }
  /**
   * This is almost equivalent to {@link Encoder#encode}, but it returns an reference of the encoder's internal buffer and thus much faster than {@link Encoder#encode}.
   *
   * @returns Encodes the object and returns a shared reference the encoder's internal buffer.
   */
  encodeSharedRef(object) {
    if (this.entered) {
      const instance = this.clone();
      return instance.encodeSharedRef(object);
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.doEncode(object, 1);
      return this.bytes.subarray(0, this.pos);
    } finally {
      this.entered = false;
    }
  }
  /**
   * @returns Encodes the object and returns a copy of the encoder's internal buffer.
   */
  encode(object) {
    if (this.entered) {
      const instance = this.clone();
      return instance.encode(object);
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.doEncode(object, 1);
      return this.bytes.slice(0, this.pos);
    } finally {
      this.entered = false;
    }
  }
  doEncode(object, depth) {
    if (depth > this.maxDepth) {
      throw new Error(`Too deep objects in depth ${depth}`);
    }
    if (object == null) {
      this.encodeNil();
    } else if (typeof object === "boolean") {
      this.encodeBoolean(object);
    } else if (typeof object === "number") {
      if (!this.forceIntegerToFloat) {
        this.encodeNumber(object);
      } else {
        this.encodeNumberAsFloat(object);
      }
    } else if (typeof object === "string") {
      this.encodeString(object);
    } else if (this.useBigInt64 && typeof object === "bigint") {
      this.encodeBigInt64(object);
    } else {
      this.encodeObject(object, depth);
    }
  }
  ensureBufferSizeToWrite(sizeToWrite) {
    const requiredSize = this.pos + sizeToWrite;
    if (this.view.byteLength < requiredSize) {
      this.resizeBuffer(requiredSize * 2);
    }
  }
  resizeBuffer(newSize) {
    const newBuffer = new ArrayBuffer(newSize);
    const newBytes = new Uint8Array(newBuffer);
    const newView = new DataView(newBuffer);
    newBytes.set(this.bytes);
    this.view = newView;
    this.bytes = newBytes;
  }
  encodeNil() {
    this.writeU8(192);
  }
  encodeBoolean(object) {
    if (object === false) {
      this.writeU8(194);
    } else {
      this.writeU8(195);
    }
  }
  encodeNumber(object) {
    if (!this.forceIntegerToFloat && Number.isSafeInteger(object)) {
      if (object >= 0) {
        if (object < 128) {
          this.writeU8(object);
        } else if (object < 256) {
          this.writeU8(204);
          this.writeU8(object);
        } else if (object < 65536) {
          this.writeU8(205);
          this.writeU16(object);
        } else if (object < 4294967296) {
          this.writeU8(206);
          this.writeU32(object);
        } else if (!this.useBigInt64) {
          this.writeU8(207);
          this.writeU64(object);
        } else {
          this.encodeNumberAsFloat(object);
        }
      } else {
        if (object >= -32) {
          this.writeU8(224 | object + 32);
        } else if (object >= -128) {
          this.writeU8(208);
          this.writeI8(object);
        } else if (object >= -32768) {
          this.writeU8(209);
          this.writeI16(object);
        } else if (object >= -2147483648) {
          this.writeU8(210);
          this.writeI32(object);
        } else if (!this.useBigInt64) {
          this.writeU8(211);
          this.writeI64(object);
        } else {
          this.encodeNumberAsFloat(object);
        }
      }
    } else {
      this.encodeNumberAsFloat(object);
    }
  }
  encodeNumberAsFloat(object) {
    if (this.forceFloat32) {
      this.writeU8(202);
      this.writeF32(object);
    } else {
      this.writeU8(203);
      this.writeF64(object);
    }
  }
  encodeBigInt64(object) {
    if (object >= BigInt(0)) {
      this.writeU8(207);
      this.writeBigUint64(object);
    } else {
      this.writeU8(211);
      this.writeBigInt64(object);
    }
  }
  writeStringHeader(byteLength) {
    if (byteLength < 32) {
      this.writeU8(160 + byteLength);
    } else if (byteLength < 256) {
      this.writeU8(217);
      this.writeU8(byteLength);
    } else if (byteLength < 65536) {
      this.writeU8(218);
      this.writeU16(byteLength);
    } else if (byteLength < 4294967296) {
      this.writeU8(219);
      this.writeU32(byteLength);
    } else {
      throw new Error(`Too long string: ${byteLength} bytes in UTF-8`);
    }
  }
  encodeString(object) {
    const maxHeaderSize = 1 + 4;
    const byteLength = utf8Count(object);
    this.ensureBufferSizeToWrite(maxHeaderSize + byteLength);
    this.writeStringHeader(byteLength);
    utf8Encode(object, this.bytes, this.pos);
    this.pos += byteLength;
  }
  encodeObject(object, depth) {
    const ext = this.extensionCodec.tryToEncode(object, this.context);
    if (ext != null) {
      this.encodeExtension(ext);
    } else if (Array.isArray(object)) {
      this.encodeArray(object, depth);
    } else if (ArrayBuffer.isView(object)) {
      this.encodeBinary(object);
    } else if (typeof object === "object") {
      this.encodeMap(object, depth);
    } else {
      throw new Error(`Unrecognized object: ${Object.prototype.toString.apply(object)}`);
    }
  }
  encodeBinary(object) {
    const size = object.byteLength;
    if (size < 256) {
      this.writeU8(196);
      this.writeU8(size);
    } else if (size < 65536) {
      this.writeU8(197);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(198);
      this.writeU32(size);
    } else {
      throw new Error(`Too large binary: ${size}`);
    }
    const bytes = ensureUint8Array(object);
    this.writeU8a(bytes);
  }
  encodeArray(object, depth) {
    const size = object.length;
    if (size < 16) {
      this.writeU8(144 + size);
    } else if (size < 65536) {
      this.writeU8(220);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(221);
      this.writeU32(size);
    } else {
      throw new Error(`Too large array: ${size}`);
    }
    for (const item of object) {
      this.doEncode(item, depth + 1);
    }
  }
  countWithoutUndefined(object, keys) {
    let count = 0;
    for (const key of keys) {
      if (object[key] !== void 0) {
        count++;
      }
    }
    return count;
  }
  encodeMap(object, depth) {
    const keys = Object.keys(object);
    if (this.sortKeys) {
      keys.sort();
    }
    const size = this.ignoreUndefined ? this.countWithoutUndefined(object, keys) : keys.length;
    if (size < 16) {
      this.writeU8(128 + size);
    } else if (size < 65536) {
      this.writeU8(222);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(223);
      this.writeU32(size);
    } else {
      throw new Error(`Too large map object: ${size}`);
    }
    for (const key of keys) {
      const value = object[key];
      if (!(this.ignoreUndefined && value === void 0)) {
        this.encodeString(key);
        this.doEncode(value, depth + 1);
      }
    }
  }
  encodeExtension(ext) {
    if (typeof ext.data === "function") {
      const data = ext.data(this.pos + 6);
      const size2 = data.length;
      if (size2 >= 4294967296) {
        throw new Error(`Too large extension object: ${size2}`);
      }
      this.writeU8(201);
      this.writeU32(size2);
      this.writeI8(ext.type);
      this.writeU8a(data);
      return;
    }
    const size = ext.data.length;
    if (size === 1) {
      this.writeU8(212);
    } else if (size === 2) {
      this.writeU8(213);
    } else if (size === 4) {
      this.writeU8(214);
    } else if (size === 8) {
      this.writeU8(215);
    } else if (size === 16) {
      this.writeU8(216);
    } else if (size < 256) {
      this.writeU8(199);
      this.writeU8(size);
    } else if (size < 65536) {
      this.writeU8(200);
      this.writeU16(size);
    } else if (size < 4294967296) {
      this.writeU8(201);
      this.writeU32(size);
    } else {
      throw new Error(`Too large extension object: ${size}`);
    }
    this.writeI8(ext.type);
    this.writeU8a(ext.data);
  }
  writeU8(value) {
    this.ensureBufferSizeToWrite(1);
    this.view.setUint8(this.pos, value);
    this.pos++;
  }
  writeU8a(values) {
    const size = values.length;
    this.ensureBufferSizeToWrite(size);
    this.bytes.set(values, this.pos);
    this.pos += size;
  }
  writeI8(value) {
    this.ensureBufferSizeToWrite(1);
    this.view.setInt8(this.pos, value);
    this.pos++;
  }
  writeU16(value) {
    this.ensureBufferSizeToWrite(2);
    this.view.setUint16(this.pos, value);
    this.pos += 2;
  }
  writeI16(value) {
    this.ensureBufferSizeToWrite(2);
    this.view.setInt16(this.pos, value);
    this.pos += 2;
  }
  writeU32(value) {
    this.ensureBufferSizeToWrite(4);
    this.view.setUint32(this.pos, value);
    this.pos += 4;
  }
  writeI32(value) {
    this.ensureBufferSizeToWrite(4);
    this.view.setInt32(this.pos, value);
    this.pos += 4;
  }
  writeF32(value) {
    this.ensureBufferSizeToWrite(4);
    this.view.setFloat32(this.pos, value);
    this.pos += 4;
  }
  writeF64(value) {
    this.ensureBufferSizeToWrite(8);
    this.view.setFloat64(this.pos, value);
    this.pos += 8;
  }
  writeU64(value) {
    this.ensureBufferSizeToWrite(8);
    setUint64(this.view, this.pos, value);
    this.pos += 8;
  }
  writeI64(value) {
    this.ensureBufferSizeToWrite(8);
    setInt64(this.view, this.pos, value);
    this.pos += 8;
  }
  writeBigUint64(value) {
    this.ensureBufferSizeToWrite(8);
    this.view.setBigUint64(this.pos, value);
    this.pos += 8;
  }
  writeBigInt64(value) {
    this.ensureBufferSizeToWrite(8);
    this.view.setBigInt64(this.pos, value);
    this.pos += 8;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/utils/prettyByte.mjs
function prettyByte(byte) {
  return `${byte < 0 ? "-" : ""}0x${Math.abs(byte).toString(16).padStart(2, "0")}`;
}

// node_modules/@msgpack/msgpack/dist.esm/CachedKeyDecoder.mjs
var DEFAULT_MAX_KEY_LENGTH = 16;
var DEFAULT_MAX_LENGTH_PER_KEY = 16;
var CachedKeyDecoder = class {
  hit = 0;
  miss = 0;
  caches;
  maxKeyLength;
  maxLengthPerKey;
  constructor(maxKeyLength = DEFAULT_MAX_KEY_LENGTH, maxLengthPerKey = DEFAULT_MAX_LENGTH_PER_KEY) {
    this.maxKeyLength = maxKeyLength;
    this.maxLengthPerKey = maxLengthPerKey;
    this.caches = [];
    for (let i = 0; i < this.maxKeyLength; i++) {
      this.caches.push([]);
    }
  }
  canBeCached(byteLength) {
    return byteLength > 0 && byteLength <= this.maxKeyLength;
  }
  find(bytes, inputOffset, byteLength) {
    const records = this.caches[byteLength - 1];
    FIND_CHUNK: for (const record of records) {
      const recordBytes = record.bytes;
      for (let j = 0; j < byteLength; j++) {
        if (recordBytes[j] !== bytes[inputOffset + j]) {
          continue FIND_CHUNK;
        }
      }
      return record.str;
    }
    return null;
  }
  store(bytes, value) {
    const records = this.caches[bytes.length - 1];
    const record = { bytes, str: value };
    if (records.length >= this.maxLengthPerKey) {
      records[Math.random() * records.length | 0] = record;
    } else {
      records.push(record);
    }
  }
  decode(bytes, inputOffset, byteLength) {
    const cachedValue = this.find(bytes, inputOffset, byteLength);
    if (cachedValue != null) {
      this.hit++;
      return cachedValue;
    }
    this.miss++;
    const str2 = utf8DecodeJs(bytes, inputOffset, byteLength);
    const slicedCopyOfBytes = Uint8Array.prototype.slice.call(bytes, inputOffset, inputOffset + byteLength);
    this.store(slicedCopyOfBytes, str2);
    return str2;
  }
};

// node_modules/@msgpack/msgpack/dist.esm/Decoder.mjs
var STATE_ARRAY = "array";
var STATE_MAP_KEY = "map_key";
var STATE_MAP_VALUE = "map_value";
var mapKeyConverter = (key) => {
  if (typeof key === "string" || typeof key === "number") {
    return key;
  }
  throw new DecodeError("The type of key must be string or number but " + typeof key);
};
var StackPool = class {
  stack = [];
  stackHeadPosition = -1;
  get length() {
    return this.stackHeadPosition + 1;
  }
  top() {
    return this.stack[this.stackHeadPosition];
  }
  pushArrayState(size) {
    const state = this.getUninitializedStateFromPool();
    state.type = STATE_ARRAY;
    state.position = 0;
    state.size = size;
    state.array = new Array(size);
  }
  pushMapState(size) {
    const state = this.getUninitializedStateFromPool();
    state.type = STATE_MAP_KEY;
    state.readCount = 0;
    state.size = size;
    state.map = {};
  }
  getUninitializedStateFromPool() {
    this.stackHeadPosition++;
    if (this.stackHeadPosition === this.stack.length) {
      const partialState = {
        type: void 0,
        size: 0,
        array: void 0,
        position: 0,
        readCount: 0,
        map: void 0,
        key: null
      };
      this.stack.push(partialState);
    }
    return this.stack[this.stackHeadPosition];
  }
  release(state) {
    const topStackState = this.stack[this.stackHeadPosition];
    if (topStackState !== state) {
      throw new Error("Invalid stack state. Released state is not on top of the stack.");
    }
    if (state.type === STATE_ARRAY) {
      const partialState = state;
      partialState.size = 0;
      partialState.array = void 0;
      partialState.position = 0;
      partialState.type = void 0;
    }
    if (state.type === STATE_MAP_KEY || state.type === STATE_MAP_VALUE) {
      const partialState = state;
      partialState.size = 0;
      partialState.map = void 0;
      partialState.readCount = 0;
      partialState.type = void 0;
    }
    this.stackHeadPosition--;
  }
  reset() {
    this.stack.length = 0;
    this.stackHeadPosition = -1;
  }
};
var HEAD_BYTE_REQUIRED = -1;
var EMPTY_VIEW = new DataView(new ArrayBuffer(0));
var EMPTY_BYTES = new Uint8Array(EMPTY_VIEW.buffer);
try {
  EMPTY_VIEW.getInt8(0);
} catch (e) {
  if (!(e instanceof RangeError)) {
    throw new Error("This module is not supported in the current JavaScript engine because DataView does not throw RangeError on out-of-bounds access");
  }
}
var MORE_DATA = new RangeError("Insufficient data");
var sharedCachedKeyDecoder = new CachedKeyDecoder();
var Decoder = class _Decoder {
  extensionCodec;
  context;
  useBigInt64;
  rawStrings;
  maxStrLength;
  maxBinLength;
  maxArrayLength;
  maxMapLength;
  maxExtLength;
  keyDecoder;
  mapKeyConverter;
  totalPos = 0;
  pos = 0;
  view = EMPTY_VIEW;
  bytes = EMPTY_BYTES;
  headByte = HEAD_BYTE_REQUIRED;
  stack = new StackPool();
  entered = false;
  constructor(options) {
    this.extensionCodec = options?.extensionCodec ?? ExtensionCodec.defaultCodec;
    this.context = options?.context;
    this.useBigInt64 = options?.useBigInt64 ?? false;
    this.rawStrings = options?.rawStrings ?? false;
    this.maxStrLength = options?.maxStrLength ?? UINT32_MAX;
    this.maxBinLength = options?.maxBinLength ?? UINT32_MAX;
    this.maxArrayLength = options?.maxArrayLength ?? UINT32_MAX;
    this.maxMapLength = options?.maxMapLength ?? UINT32_MAX;
    this.maxExtLength = options?.maxExtLength ?? UINT32_MAX;
    this.keyDecoder = options?.keyDecoder !== void 0 ? options.keyDecoder : sharedCachedKeyDecoder;
    this.mapKeyConverter = options?.mapKeyConverter ?? mapKeyConverter;
  }
  clone() {
    return new _Decoder({
      extensionCodec: this.extensionCodec,
      context: this.context,
      useBigInt64: this.useBigInt64,
      rawStrings: this.rawStrings,
      maxStrLength: this.maxStrLength,
      maxBinLength: this.maxBinLength,
      maxArrayLength: this.maxArrayLength,
      maxMapLength: this.maxMapLength,
      maxExtLength: this.maxExtLength,
      keyDecoder: this.keyDecoder
    });
  }
  reinitializeState() {
    this.totalPos = 0;
    this.headByte = HEAD_BYTE_REQUIRED;
    this.stack.reset();
  }
  setBuffer(buffer) {
    const bytes = ensureUint8Array(buffer);
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.pos = 0;
  }
  appendBuffer(buffer) {
    if (this.headByte === HEAD_BYTE_REQUIRED && !this.hasRemaining(1)) {
      this.setBuffer(buffer);
    } else {
      const remainingData = this.bytes.subarray(this.pos);
      const newData = ensureUint8Array(buffer);
      const newBuffer = new Uint8Array(remainingData.length + newData.length);
      newBuffer.set(remainingData);
      newBuffer.set(newData, remainingData.length);
      this.setBuffer(newBuffer);
    }
  }
  hasRemaining(size) {
    return this.view.byteLength - this.pos >= size;
  }
  createExtraByteError(posToShow) {
    const { view, pos } = this;
    return new RangeError(`Extra ${view.byteLength - pos} of ${view.byteLength} byte(s) found at buffer[${posToShow}]`);
  }
  /**
   * @throws {@link DecodeError}
   * @throws {@link RangeError}
   */
  decode(buffer) {
    if (this.entered) {
      const instance = this.clone();
      return instance.decode(buffer);
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.setBuffer(buffer);
      const object = this.doDecodeSync();
      if (this.hasRemaining(1)) {
        throw this.createExtraByteError(this.pos);
      }
      return object;
    } finally {
      this.entered = false;
    }
  }
  *decodeMulti(buffer) {
    if (this.entered) {
      const instance = this.clone();
      yield* instance.decodeMulti(buffer);
      return;
    }
    try {
      this.entered = true;
      this.reinitializeState();
      this.setBuffer(buffer);
      while (this.hasRemaining(1)) {
        yield this.doDecodeSync();
      }
    } finally {
      this.entered = false;
    }
  }
  async decodeAsync(stream) {
    if (this.entered) {
      const instance = this.clone();
      return instance.decodeAsync(stream);
    }
    try {
      this.entered = true;
      let decoded = false;
      let object;
      for await (const buffer of stream) {
        if (decoded) {
          this.entered = false;
          throw this.createExtraByteError(this.totalPos);
        }
        this.appendBuffer(buffer);
        try {
          object = this.doDecodeSync();
          decoded = true;
        } catch (e) {
          if (!(e instanceof RangeError)) {
            throw e;
          }
        }
        this.totalPos += this.pos;
      }
      if (decoded) {
        if (this.hasRemaining(1)) {
          throw this.createExtraByteError(this.totalPos);
        }
        return object;
      }
      const { headByte, pos, totalPos } = this;
      throw new RangeError(`Insufficient data in parsing ${prettyByte(headByte)} at ${totalPos} (${pos} in the current buffer)`);
    } finally {
      this.entered = false;
    }
  }
  decodeArrayStream(stream) {
    return this.decodeMultiAsync(stream, true);
  }
  decodeStream(stream) {
    return this.decodeMultiAsync(stream, false);
  }
  async *decodeMultiAsync(stream, isArray) {
    if (this.entered) {
      const instance = this.clone();
      yield* instance.decodeMultiAsync(stream, isArray);
      return;
    }
    try {
      this.entered = true;
      let isArrayHeaderRequired = isArray;
      let arrayItemsLeft = -1;
      for await (const buffer of stream) {
        if (isArray && arrayItemsLeft === 0) {
          throw this.createExtraByteError(this.totalPos);
        }
        this.appendBuffer(buffer);
        if (isArrayHeaderRequired) {
          arrayItemsLeft = this.readArraySize();
          isArrayHeaderRequired = false;
          this.complete();
        }
        try {
          while (true) {
            yield this.doDecodeSync();
            if (--arrayItemsLeft === 0) {
              break;
            }
          }
        } catch (e) {
          if (!(e instanceof RangeError)) {
            throw e;
          }
        }
        this.totalPos += this.pos;
      }
    } finally {
      this.entered = false;
    }
  }
  doDecodeSync() {
    DECODE: while (true) {
      const headByte = this.readHeadByte();
      let object;
      if (headByte >= 224) {
        object = headByte - 256;
      } else if (headByte < 192) {
        if (headByte < 128) {
          object = headByte;
        } else if (headByte < 144) {
          const size = headByte - 128;
          if (size !== 0) {
            this.pushMapState(size);
            this.complete();
            continue DECODE;
          } else {
            object = {};
          }
        } else if (headByte < 160) {
          const size = headByte - 144;
          if (size !== 0) {
            this.pushArrayState(size);
            this.complete();
            continue DECODE;
          } else {
            object = [];
          }
        } else {
          const byteLength = headByte - 160;
          object = this.decodeString(byteLength, 0);
        }
      } else if (headByte === 192) {
        object = null;
      } else if (headByte === 194) {
        object = false;
      } else if (headByte === 195) {
        object = true;
      } else if (headByte === 202) {
        object = this.readF32();
      } else if (headByte === 203) {
        object = this.readF64();
      } else if (headByte === 204) {
        object = this.readU8();
      } else if (headByte === 205) {
        object = this.readU16();
      } else if (headByte === 206) {
        object = this.readU32();
      } else if (headByte === 207) {
        if (this.useBigInt64) {
          object = this.readU64AsBigInt();
        } else {
          object = this.readU64();
        }
      } else if (headByte === 208) {
        object = this.readI8();
      } else if (headByte === 209) {
        object = this.readI16();
      } else if (headByte === 210) {
        object = this.readI32();
      } else if (headByte === 211) {
        if (this.useBigInt64) {
          object = this.readI64AsBigInt();
        } else {
          object = this.readI64();
        }
      } else if (headByte === 217) {
        const byteLength = this.lookU8();
        object = this.decodeString(byteLength, 1);
      } else if (headByte === 218) {
        const byteLength = this.lookU16();
        object = this.decodeString(byteLength, 2);
      } else if (headByte === 219) {
        const byteLength = this.lookU32();
        object = this.decodeString(byteLength, 4);
      } else if (headByte === 220) {
        const size = this.readU16();
        if (size !== 0) {
          this.pushArrayState(size);
          this.complete();
          continue DECODE;
        } else {
          object = [];
        }
      } else if (headByte === 221) {
        const size = this.readU32();
        if (size !== 0) {
          this.pushArrayState(size);
          this.complete();
          continue DECODE;
        } else {
          object = [];
        }
      } else if (headByte === 222) {
        const size = this.readU16();
        if (size !== 0) {
          this.pushMapState(size);
          this.complete();
          continue DECODE;
        } else {
          object = {};
        }
      } else if (headByte === 223) {
        const size = this.readU32();
        if (size !== 0) {
          this.pushMapState(size);
          this.complete();
          continue DECODE;
        } else {
          object = {};
        }
      } else if (headByte === 196) {
        const size = this.lookU8();
        object = this.decodeBinary(size, 1);
      } else if (headByte === 197) {
        const size = this.lookU16();
        object = this.decodeBinary(size, 2);
      } else if (headByte === 198) {
        const size = this.lookU32();
        object = this.decodeBinary(size, 4);
      } else if (headByte === 212) {
        object = this.decodeExtension(1, 0);
      } else if (headByte === 213) {
        object = this.decodeExtension(2, 0);
      } else if (headByte === 214) {
        object = this.decodeExtension(4, 0);
      } else if (headByte === 215) {
        object = this.decodeExtension(8, 0);
      } else if (headByte === 216) {
        object = this.decodeExtension(16, 0);
      } else if (headByte === 199) {
        const size = this.lookU8();
        object = this.decodeExtension(size, 1);
      } else if (headByte === 200) {
        const size = this.lookU16();
        object = this.decodeExtension(size, 2);
      } else if (headByte === 201) {
        const size = this.lookU32();
        object = this.decodeExtension(size, 4);
      } else {
        throw new DecodeError(`Unrecognized type byte: ${prettyByte(headByte)}`);
      }
      this.complete();
      const stack = this.stack;
      while (stack.length > 0) {
        const state = stack.top();
        if (state.type === STATE_ARRAY) {
          state.array[state.position] = object;
          state.position++;
          if (state.position === state.size) {
            object = state.array;
            stack.release(state);
          } else {
            continue DECODE;
          }
        } else if (state.type === STATE_MAP_KEY) {
          if (object === "__proto__") {
            throw new DecodeError("The key __proto__ is not allowed");
          }
          state.key = this.mapKeyConverter(object);
          state.type = STATE_MAP_VALUE;
          continue DECODE;
        } else {
          state.map[state.key] = object;
          state.readCount++;
          if (state.readCount === state.size) {
            object = state.map;
            stack.release(state);
          } else {
            state.key = null;
            state.type = STATE_MAP_KEY;
            continue DECODE;
          }
        }
      }
      return object;
    }
  }
  readHeadByte() {
    if (this.headByte === HEAD_BYTE_REQUIRED) {
      this.headByte = this.readU8();
    }
    return this.headByte;
  }
  complete() {
    this.headByte = HEAD_BYTE_REQUIRED;
  }
  readArraySize() {
    const headByte = this.readHeadByte();
    switch (headByte) {
      case 220:
        return this.readU16();
      case 221:
        return this.readU32();
      default: {
        if (headByte < 160) {
          return headByte - 144;
        } else {
          throw new DecodeError(`Unrecognized array type byte: ${prettyByte(headByte)}`);
        }
      }
    }
  }
  pushMapState(size) {
    if (size > this.maxMapLength) {
      throw new DecodeError(`Max length exceeded: map length (${size}) > maxMapLengthLength (${this.maxMapLength})`);
    }
    this.stack.pushMapState(size);
  }
  pushArrayState(size) {
    if (size > this.maxArrayLength) {
      throw new DecodeError(`Max length exceeded: array length (${size}) > maxArrayLength (${this.maxArrayLength})`);
    }
    this.stack.pushArrayState(size);
  }
  decodeString(byteLength, headerOffset) {
    if (!this.rawStrings || this.stateIsMapKey()) {
      return this.decodeUtf8String(byteLength, headerOffset);
    }
    return this.decodeBinary(byteLength, headerOffset);
  }
  /**
   * @throws {@link RangeError}
   */
  decodeUtf8String(byteLength, headerOffset) {
    if (byteLength > this.maxStrLength) {
      throw new DecodeError(`Max length exceeded: UTF-8 byte length (${byteLength}) > maxStrLength (${this.maxStrLength})`);
    }
    if (this.bytes.byteLength < this.pos + headerOffset + byteLength) {
      throw MORE_DATA;
    }
    const offset = this.pos + headerOffset;
    let object;
    if (this.stateIsMapKey() && this.keyDecoder?.canBeCached(byteLength)) {
      object = this.keyDecoder.decode(this.bytes, offset, byteLength);
    } else {
      object = utf8Decode(this.bytes, offset, byteLength);
    }
    this.pos += headerOffset + byteLength;
    return object;
  }
  stateIsMapKey() {
    if (this.stack.length > 0) {
      const state = this.stack.top();
      return state.type === STATE_MAP_KEY;
    }
    return false;
  }
  /**
   * @throws {@link RangeError}
   */
  decodeBinary(byteLength, headOffset) {
    if (byteLength > this.maxBinLength) {
      throw new DecodeError(`Max length exceeded: bin length (${byteLength}) > maxBinLength (${this.maxBinLength})`);
    }
    if (!this.hasRemaining(byteLength + headOffset)) {
      throw MORE_DATA;
    }
    const offset = this.pos + headOffset;
    const object = this.bytes.subarray(offset, offset + byteLength);
    this.pos += headOffset + byteLength;
    return object;
  }
  decodeExtension(size, headOffset) {
    if (size > this.maxExtLength) {
      throw new DecodeError(`Max length exceeded: ext length (${size}) > maxExtLength (${this.maxExtLength})`);
    }
    const extType = this.view.getInt8(this.pos + headOffset);
    const data = this.decodeBinary(
      size,
      headOffset + 1
      /* extType */
    );
    return this.extensionCodec.decode(data, extType, this.context);
  }
  lookU8() {
    return this.view.getUint8(this.pos);
  }
  lookU16() {
    return this.view.getUint16(this.pos);
  }
  lookU32() {
    return this.view.getUint32(this.pos);
  }
  readU8() {
    const value = this.view.getUint8(this.pos);
    this.pos++;
    return value;
  }
  readI8() {
    const value = this.view.getInt8(this.pos);
    this.pos++;
    return value;
  }
  readU16() {
    const value = this.view.getUint16(this.pos);
    this.pos += 2;
    return value;
  }
  readI16() {
    const value = this.view.getInt16(this.pos);
    this.pos += 2;
    return value;
  }
  readU32() {
    const value = this.view.getUint32(this.pos);
    this.pos += 4;
    return value;
  }
  readI32() {
    const value = this.view.getInt32(this.pos);
    this.pos += 4;
    return value;
  }
  readU64() {
    const value = getUint64(this.view, this.pos);
    this.pos += 8;
    return value;
  }
  readI64() {
    const value = getInt64(this.view, this.pos);
    this.pos += 8;
    return value;
  }
  readU64AsBigInt() {
    const value = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return value;
  }
  readI64AsBigInt() {
    const value = this.view.getBigInt64(this.pos);
    this.pos += 8;
    return value;
  }
  readF32() {
    const value = this.view.getFloat32(this.pos);
    this.pos += 4;
    return value;
  }
  readF64() {
    const value = this.view.getFloat64(this.pos);
    this.pos += 8;
    return value;
  }
};

// src/protocol.ts
var VERSION = 1;
var HELLO = 1;
var ACCEPT = 2;
var DATA = 3;
var HEADER_SIZE = 16;
var TAG_SIZE = 16;
var KEY_SIZE = 32;
var HELLO_MIN = HEADER_SIZE + KEY_SIZE + TAG_SIZE;
var ACCEPT_SIZE = HEADER_SIZE + KEY_SIZE + TAG_SIZE;
var WS_MAX_PACKET = 65536;
var WS_MAX_PLAINTEXT = WS_MAX_PACKET - HEADER_SIZE - TAG_SIZE;
var WELCOME_ENTRY_BYTES = 1083;
var LIMITS_LENGTH = 7;
var LeaveReason = { Left: 1, Timeout: 2, Kicked: 3, Disconnected: 4 };
var CloseReason = { Deleted: 1, Idle: 2, Lifetime: 3, Kicked: 4, Shutdown: 5, CapExceeded: 6 };
var ErrorCode = {
  BadRequest: 1,
  RateLimited: 2,
  RoomFull: 3,
  PayloadTooLarge: 4,
  ProfileTooLarge: 5,
  Unauthorized: 6,
  Overloaded: 7,
  NotJoined: 8
};
var ProtocolError = class extends Error {
  name = "ProtocolError";
};
function subtle() {
  const s = globalThis.crypto?.subtle;
  if (s === void 0) {
    throw new Error("WebCrypto (crypto.subtle) is unavailable: serve the page over https or from localhost");
  }
  return s;
}
var EMPTY = new Uint8Array(0);
var LABEL_PSK = utf8.encode("gs2relay/1 psk");
var LABEL_HELLO = utf8.encode("gs2relay/1 hello");
var LABEL_SESSION = utf8.encode("gs2relay/1 session");
var X25519_PKCS8_PREFIX = Uint8Array.of(
  48,
  46,
  2,
  1,
  0,
  48,
  5,
  6,
  3,
  43,
  101,
  110,
  4,
  34,
  4,
  32
);
function decodeRoomKey(text) {
  let key;
  try {
    key = fromBase64Url(text.trim());
  } catch {
    throw new TypeError("room key is not base64url");
  }
  if (key.length !== KEY_SIZE) throw new TypeError(`room key must decode to 32 bytes, not ${key.length}`);
  return key;
}
async function hkdf(salt, ikm, info, length) {
  const key = await subtle().importKey("raw", ikm, "HKDF", false, ["deriveBits"]);
  const bits = await subtle().deriveBits(
    { name: "HKDF", hash: "SHA-256", salt, info },
    key,
    length * 8
  );
  return new Uint8Array(bits);
}
function derivePsk(roomKey) {
  return hkdf(EMPTY, roomKey, LABEL_PSK, 32);
}
function deriveHelloKey(psk, clientPublic) {
  return hkdf(clientPublic, psk, LABEL_HELLO, 32);
}
async function deriveSessionKeys(psk, dh, clientPublic, relayPublic) {
  const okm = await hkdf(psk, dh, concat(LABEL_SESSION, clientPublic, relayPublic), 64);
  return { c2s: okm.slice(0, 32), s2c: okm.slice(32, 64) };
}
async function generateEphemeral() {
  const pair = await subtle().generateKey({ name: "X25519" }, false, ["deriveBits"]);
  return { privateKey: pair.privateKey, publicKey: new Uint8Array(await subtle().exportKey("raw", pair.publicKey)) };
}
async function x25519(privateKey, peerPublic) {
  let dh;
  try {
    const peer = await subtle().importKey("raw", peerPublic, { name: "X25519" }, false, []);
    dh = new Uint8Array(await subtle().deriveBits({ name: "X25519", public: peer }, privateKey, 256));
  } catch {
    throw new ProtocolError("X25519 failed (low-order or invalid public key)");
  }
  if (dh.every((b) => b === 0)) throw new ProtocolError("X25519 output is all zero");
  return dh;
}
function setCounter(v, at, counter) {
  v.setBigUint64(at, BigInt(counter));
}
function encodeHeader(type, sessionId, counter) {
  const out = new Uint8Array(HEADER_SIZE);
  const v = new DataView(out.buffer);
  v.setUint8(0, VERSION);
  v.setUint8(1, type);
  v.setUint16(2, 0);
  v.setUint32(4, sessionId);
  setCounter(v, 8, counter);
  return out;
}
function decodeHeader(packet) {
  if (packet.length < HEADER_SIZE) return null;
  const v = new DataView(packet.buffer, packet.byteOffset, HEADER_SIZE);
  return {
    version: v.getUint8(0),
    type: v.getUint8(1),
    flags: v.getUint16(2),
    sessionId: v.getUint32(4),
    counter: v.getBigUint64(8)
  };
}
function nonce(counter) {
  const out = new Uint8Array(12);
  setCounter(new DataView(out.buffer), 4, counter);
  return out;
}
function aeadKey(raw) {
  return subtle().importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
}
async function seal(key, counter, plaintext, aad) {
  const ct = await subtle().encrypt(
    { name: "AES-GCM", iv: nonce(counter), additionalData: aad, tagLength: 128 },
    key,
    plaintext
  );
  return new Uint8Array(ct);
}
async function open(key, counter, ciphertext, aad) {
  const pt = await subtle().decrypt(
    { name: "AES-GCM", iv: nonce(counter), additionalData: aad, tagLength: 128 },
    key,
    ciphertext
  );
  return new Uint8Array(pt);
}
async function buildHello(helloKey, clientPublic, padding = 0) {
  const aad = concat(encodeHeader(HELLO, 0, 0), clientPublic);
  return concat(aad, await seal(helloKey, 0, new Uint8Array(padding), aad));
}
async function openAccept(packet, psk, ephemeral) {
  const h = decodeHeader(packet);
  if (h === null || packet.length < ACCEPT_SIZE || h.version !== VERSION || h.type !== ACCEPT || h.flags !== 0) {
    throw new ProtocolError("not an ACCEPT");
  }
  if (h.sessionId === 0 || h.counter !== 0n) throw new ProtocolError("ACCEPT with session 0 or a counter");
  const relayPublic = packet.slice(HEADER_SIZE, HEADER_SIZE + KEY_SIZE);
  const dh = await x25519(ephemeral.privateKey, relayPublic);
  const keys = await deriveSessionKeys(psk, dh, ephemeral.publicKey, relayPublic);
  const aad = packet.subarray(0, HEADER_SIZE + KEY_SIZE);
  try {
    await open(await aeadKey(keys.s2c), 0, packet.subarray(HEADER_SIZE + KEY_SIZE), aad);
  } catch {
    throw new ProtocolError("ACCEPT does not authenticate");
  }
  return { sessionId: h.sessionId, keys };
}
function openPacket(key, packet) {
  const iv = new Uint8Array(12);
  iv.set(packet.subarray(8, HEADER_SIZE), 4);
  return subtle().decrypt(
    { name: "AES-GCM", iv, additionalData: packet.subarray(0, HEADER_SIZE), tagLength: 128 },
    key,
    packet.subarray(HEADER_SIZE)
  );
}
async function sealData(key, sessionId, counter, plaintext) {
  const header = encodeHeader(DATA, sessionId, counter);
  return concat(header, await seal(key, counter, plaintext, header));
}
var encoder = new Encoder({ useBigInt64: true });
var decoder = new Decoder({ useBigInt64: true });
var Float = class {
  constructor(value) {
    this.value = value;
  }
  value;
};
for (const name of ["readF32", "readF64"]) {
  const reader = decoder;
  const read = reader[name].bind(decoder);
  reader[name] = () => new Float(read());
}
function wideUint(n) {
  return n < 4294967296 ? n : BigInt(n);
}
function encodeClientMessage(m) {
  switch (m.code) {
    case 1 /* Join */:
      return encoder.encode([m.code, m.userId, m.profile, m.accessToken, m.resumeToken]);
    case 2 /* Send */:
      return encoder.encode([m.code, m.data, m.targets === null ? null : [...m.targets]]);
    case 3 /* Profile */:
      return encoder.encode([m.code, m.profile]);
    case 4 /* Ping */:
      return encoder.encode([m.code, wideUint(m.pingId), wideUint(m.clientTimeUs)]);
    case 6 /* PathPong */:
      return encoder.encode([m.code, typeof m.challenge === "bigint" ? m.challenge : wideUint(m.challenge)]);
    case 5 /* Bye */:
    case 7 /* Sync */:
      return encoder.encode([m.code]);
  }
}
function fail(what) {
  throw new ProtocolError(`malformed message: ${what}`);
}
function uint(v, what) {
  if (typeof v === "number" && Number.isInteger(v) && v >= 0) return v;
  if (typeof v === "bigint" && v >= 0n && v <= BigInt(Number.MAX_SAFE_INTEGER)) return Number(v);
  return fail(what);
}
function wide(v, what) {
  if (typeof v === "bigint" && v >= 0n) return v;
  return uint(v, what);
}
function bin(v, what) {
  return v instanceof Uint8Array ? v : fail(what);
}
function str(v, what) {
  return typeof v === "string" ? v : fail(what);
}
function bool(v, what) {
  return typeof v === "boolean" ? v : fail(what);
}
function arr(v, length, what) {
  return Array.isArray(v) && v.length >= length ? v : fail(what);
}
function welcomePart(a) {
  if (a.length < 9) return { part: 0, parts: 0 };
  const part = uint(a[7], "welcome part");
  const parts = uint(a[8], "welcome parts");
  return part < parts ? { part, parts } : fail("welcome part");
}
function decodeOne(raw) {
  const a = Array.isArray(raw) && raw.length > 0 ? raw : fail("not an array");
  const code = uint(a[0], "type code");
  switch (code) {
    case 16 /* Welcome */: {
      arr(a, 7, "WELCOME");
      const l = arr(a[3], LIMITS_LENGTH, "WELCOME limits").slice(0, LIMITS_LENGTH).map((x) => uint(x, "limit"));
      return {
        code,
        connectionId: uint(a[1], "connection id"),
        resumeToken: bin(a[2], "resume token"),
        limits: {
          maxPlayers: l[0],
          maxPayload: l[1],
          maxProfile: l[2],
          messagesPerSecond: l[3],
          bytesPerSecond: l[4],
          keepaliveTimeoutMs: l[5],
          resumeGraceMs: l[6]
        },
        members: (Array.isArray(a[4]) ? a[4] : fail("WELCOME members")).map((m) => {
          const e = arr(m, 3, "member");
          return { connectionId: uint(e[0], "member id"), userId: str(e[1], "user id"), profile: bin(e[2], "profile") };
        }),
        more: bool(a[5], "more"),
        resumed: bool(a[6], "resumed"),
        ...welcomePart(a)
      };
    }
    case 17 /* MemberJoin */:
      arr(a, 4, "JOIN");
      return { code, connectionId: uint(a[1], "connection id"), userId: str(a[2], "user id"), profile: bin(a[3], "profile") };
    case 18 /* Leave */:
      arr(a, 3, "LEAVE");
      return { code, connectionId: uint(a[1], "connection id"), reason: uint(a[2], "reason") };
    case 19 /* MemberProfile */:
      arr(a, 3, "PROFILE");
      return { code, connectionId: uint(a[1], "connection id"), profile: bin(a[2], "profile") };
    case 20 /* Message */:
      arr(a, 3, "MESSAGE");
      return { code, sender: uint(a[1], "sender"), data: bin(a[2], "data") };
    case 21 /* Pong */:
      arr(a, 3, "PONG");
      return { code, pingId: uint(a[1], "ping id"), clientTimeUs: uint(a[2], "client time") };
    case 22 /* Error */:
      arr(a, 3, "ERROR");
      return { code, errorCode: uint(a[1], "error code"), text: str(a[2], "text") };
    case 23 /* Closing */:
      arr(a, 3, "CLOSING");
      return { code, reason: uint(a[1], "reason"), text: str(a[2], "text") };
    case 24 /* PathPing */:
      arr(a, 2, "PING");
      return { code, challenge: wide(a[1], "challenge") };
    default:
      return null;
  }
}
function decodeRelayMessages(plaintext) {
  const out = [];
  let raw;
  try {
    raw = [...decoder.decodeMulti(plaintext)];
  } catch (e) {
    throw new ProtocolError(`undecodable msgpack: ${String(e)}`);
  }
  if (raw.length === 0) fail("empty plaintext");
  for (const r of raw) {
    const m = decodeOne(r);
    if (m !== null) out.push(m);
  }
  return out;
}

// src/channel.ts
var SocketChannel = class {
  constructor(WS, request, events) {
    this.request = request;
    this.events = events;
    const hello = this.prepareHello();
    hello.catch(() => {
    });
    this.ws = new WS(request.url);
    this.ws.binaryType = "arraybuffer";
    this.closedSocket = new Promise((resolve) => {
      this.ws.addEventListener("close", () => resolve());
      this.ws.addEventListener("error", () => this.ws.readyState === 0 && resolve());
    });
    this.ws.onopen = () => {
      hello.then(
        ([, packet]) => this.ws.readyState === 1 && this.ws.send(packet),
        (e) => this.fail(`cannot build HELLO: ${String(e)}`)
      );
    };
    this.ws.onmessage = (ev) => {
      if (!(ev.data instanceof ArrayBuffer)) return;
      if (this.rxKey !== null) this.receive(ev.data);
      else {
        const packet = new Uint8Array(ev.data);
        this.accepting = this.accepting.then(() => this.accept(packet, hello));
      }
    };
    this.ws.onclose = (ev) => {
      this.closeCause = `connection closed (${ev.code}${ev.reason ? ` ${ev.reason}` : ""})`;
      this.closeFrame = { code: ev.code, reason: ev.reason };
      void this.accepting.then(() => this.deliver());
    };
    this.ws.onerror = () => {
      if (this.ws.readyState !== 0 || this.closeCause !== null) return;
      this.closeCause = "connection failed (1006)";
      this.closeFrame = { code: 1006, reason: "" };
      void this.accepting.then(() => this.deliver());
    };
  }
  request;
  events;
  stats = { packetsIn: 0, packetsOut: 0, dropped: 0 };
  ws;
  sessionId = 0;
  txKey = null;
  rxKey = null;
  txCounter = 0;
  /** The last DATA counter accepted; a number: no session reaches 2^53 packets. */
  rxCounter = 0;
  /** Packets being opened, in arrival order; `pt` is undefined until WebCrypto answers. */
  inbound = [];
  accepting = Promise.resolve();
  tx = Promise.resolve();
  closeCause = null;
  closeFrame = null;
  done = false;
  closedSocket;
  async prepareHello() {
    const eph = await generateEphemeral();
    const helloKey = await aeadKey(await deriveHelloKey(this.request.psk, eph.publicKey));
    return [eph, await buildHello(helloKey, eph.publicKey)];
  }
  async accept(packet, hello) {
    if (this.rxKey !== null || this.done) return;
    try {
      const [eph] = await hello;
      const { sessionId, keys } = await openAccept(packet, this.request.psk, eph);
      this.sessionId = sessionId;
      this.txKey = await aeadKey(keys.c2s);
      this.rxKey = await aeadKey(keys.s2c);
    } catch (e) {
      this.fail(e instanceof ProtocolError ? `bad ACCEPT: ${e.message}` : String(e));
      return;
    }
    this.send([this.request.join]);
  }
  /**
   * A DATA packet: checked (section 4.4), then opened. The decryptions run concurrently and are
   * taken in arrival order, one promise per packet: this is the hot path of a busy room.
   */
  receive(data) {
    this.stats.packetsIn++;
    const v = new DataView(data);
    if (data.byteLength < HEADER_SIZE + TAG_SIZE || v.getUint8(0) !== VERSION || v.getUint8(1) !== DATA || v.getUint16(2) !== 0 || v.getUint32(4) !== this.sessionId || v.getUint32(8) >= 2097152) {
      this.stats.dropped++;
      return;
    }
    const counter = v.getUint32(8) * 4294967296 + v.getUint32(12);
    if (counter <= this.rxCounter) {
      this.stats.dropped++;
      return;
    }
    const entry = { counter, pt: void 0 };
    this.inbound.push(entry);
    openPacket(this.rxKey, new Uint8Array(data)).then(
      (pt) => {
        entry.pt = new Uint8Array(pt);
        this.deliver();
      },
      () => {
        entry.pt = null;
        this.deliver();
      }
    );
  }
  deliver() {
    const out = [];
    while (this.inbound.length > 0 && this.inbound[0].pt !== void 0) {
      const { counter, pt } = this.inbound.shift();
      if (pt == null || counter <= this.rxCounter || this.done) {
        this.stats.dropped++;
        continue;
      }
      this.rxCounter = counter;
      out.push(pt);
    }
    if (out.length > 0) this.events.plaintexts(out);
    if (this.closeCause !== null && this.inbound.length === 0) this.fail(this.closeCause, this.closeFrame);
  }
  send(plaintexts) {
    if (this.txKey === null || this.done || this.ws.readyState !== 1) return;
    for (const pt of plaintexts) {
      const sealed = sealData(this.txKey, this.sessionId, ++this.txCounter, pt).then(
        (p) => p,
        () => null
      );
      this.tx = this.tx.then(async () => {
        const packet = await sealed;
        if (packet !== null && this.ws.readyState === 1) {
          this.ws.send(packet);
          this.stats.packetsOut++;
        }
      });
    }
  }
  async end(code) {
    if (!this.done) {
      this.done = true;
      await this.tx;
      this.close(code);
    }
    await this.closedSocket;
  }
  fail(cause, frame = null) {
    if (this.done) return;
    this.done = true;
    this.close(1e3);
    this.events.closed(cause, frame);
  }
  close(code) {
    try {
      this.ws.close(code);
    } catch {
    }
  }
};
var FailedChannel = class {
  stats = { packetsIn: 0, packetsOut: 0, dropped: 0 };
  ended = false;
  constructor(cause, events) {
    setTimeout(() => this.ended || events.closed(cause, null), 0);
  }
  send() {
  }
  async end() {
    this.ended = true;
  }
};
function openSocketChannel(WS, request, events) {
  try {
    return new SocketChannel(WS, request, events);
  } catch (e) {
    return new FailedChannel(`cannot open a WebSocket to ${request.url}: ${String(e)}`, events);
  }
}
var WorkerHub = class {
  worker;
  channels = /* @__PURE__ */ new Map();
  /** True once the worker runs, false if it could not start. */
  ready;
  /** True while the worker runs (after "ready", until it fails). */
  running = false;
  nextId = 0;
  nextWake = 0;
  /** Timers waiting in the worker, by wake id. */
  wakes = /* @__PURE__ */ new Map();
  constructor(url) {
    this.worker = new Worker(url, { type: "module", name: "gs2relay" });
    this.ready = new Promise((resolve) => {
      this.worker.onmessage = (ev) => {
        const m = ev.data;
        if (m.t === "ready") {
          this.running = true;
          resolve(true);
        } else if (m.t === "wake") {
          const fn = this.wakes.get(m.id);
          this.wakes.delete(m.id);
          fn?.();
        } else this.channels.get(m.id)?.fromWorker(m);
      };
      this.worker.onerror = (ev) => {
        ev.preventDefault();
        resolve(false);
        hub = null;
        this.running = false;
        for (const fn of this.wakes.values()) setTimeout(fn, 0);
        this.wakes.clear();
        for (const [id, c] of this.channels) {
          c.fromWorker({ t: "closed", id, cause: "worker failed", close: null, stats: c.stats });
        }
      };
    });
  }
  id() {
    return ++this.nextId;
  }
  post(message) {
    this.worker.postMessage(message);
  }
  /** `fn` after `ms`, timed in the worker; returns what cancels it. */
  wake(fn, ms) {
    const id = ++this.nextWake;
    this.wakes.set(id, fn);
    this.post({ t: "wake", id, ms });
    return () => {
      if (this.wakes.delete(id)) this.post({ t: "unwake", id });
    };
  }
};
function pageTimer(useWorker, WS) {
  const viaWorker = useWorker && WS === void 0;
  return (fn, ms) => {
    const h = viaWorker ? hub : null;
    if (h != null && h.running) return h.wake(fn, ms);
    const timer = setTimeout(fn, ms);
    return () => clearTimeout(timer);
  };
}
var hub;
function workerHub() {
  if (hub === void 0) {
    try {
      hub = typeof Worker === "function" ? new WorkerHub(new URL("./relay-worker.js", import.meta.url)) : null;
    } catch {
      hub = null;
    }
  }
  return hub;
}
var WorkerChannel = class {
  constructor(hub2, request, events) {
    this.hub = hub2;
    this.events = events;
    this.id = hub2.id();
    this.socketClosed = new Promise((resolve) => this.closeSocket = resolve);
    void hub2.ready.then((ok) => {
      if (ok) {
        hub2.channels.set(this.id, this);
        hub2.post({ t: "open", id: this.id, request });
        if (this.queued.length > 0) hub2.post({ t: "send", id: this.id, pts: this.queued });
        if (this.endCode !== null) hub2.post({ t: "end", id: this.id, code: this.endCode });
      } else {
        this.inThread = openSocketChannel(WebSocket, request, events);
        this.stats = this.inThread.stats;
        if (this.queued.length > 0) this.inThread.send(this.queued);
        if (this.endCode !== null) void this.inThread.end(this.endCode).then(this.closeSocket);
      }
      this.queued = [];
    });
  }
  hub;
  events;
  stats = { packetsIn: 0, packetsOut: 0, dropped: 0 };
  inThread = null;
  id;
  queued = [];
  endCode = null;
  socketClosed;
  closeSocket;
  gone = false;
  fromWorker(m) {
    if (m.t === "data") {
      this.stats = m.stats;
      if (!this.gone) this.events.plaintexts(m.pts);
    } else if (m.t === "closed") {
      this.stats = m.stats;
      this.hub.channels.delete(this.id);
      this.closeSocket();
      if (m.cause !== null && !this.gone) {
        this.gone = true;
        this.events.closed(m.cause, m.close);
      }
    }
  }
  send(pts) {
    if (this.inThread !== null) this.inThread.send(pts);
    else if (this.hub.channels.has(this.id)) this.hub.post({ t: "send", id: this.id, pts });
    else this.queued.push(...pts);
  }
  async end(code) {
    this.gone = true;
    if (this.inThread !== null) return this.inThread.end(code);
    if (this.hub.channels.has(this.id)) this.hub.post({ t: "end", id: this.id, code });
    else this.endCode = code;
    return this.socketClosed;
  }
};
function openChannel(request, events, WS, useWorker) {
  const h = useWorker && WS === void 0 ? workerHub() : null;
  if (h !== null) return new WorkerChannel(h, request, events);
  const ctor = WS ?? globalThis.WebSocket;
  if (ctor === void 0) {
    throw new TypeError("no WebSocket: use Node 22+, node --experimental-websocket, or options.WebSocket");
  }
  return openSocketChannel(ctor, request, events);
}

export {
  utf8,
  equal,
  toBase64Url,
  fromBase64Url,
  WS_MAX_PLAINTEXT,
  WELCOME_ENTRY_BYTES,
  LeaveReason,
  CloseReason,
  ErrorCode,
  decodeRoomKey,
  derivePsk,
  encodeClientMessage,
  decodeRelayMessages,
  openSocketChannel,
  pageTimer,
  openChannel
};
