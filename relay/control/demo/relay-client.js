// Built from clients/js by `npm run bundle` (esbuild); do not edit.
import {
  ConnectionError,
  JoinRefusedError,
  RESUMED_ELSEWHERE,
  RelayClient,
  connect,
  relayUrl
} from "./relay-shared-MXT2KI3D.js";
import {
  CloseReason,
  ErrorCode,
  LeaveReason,
  WELCOME_ENTRY_BYTES,
  fromBase64Url,
  toBase64Url
} from "./relay-shared-4GUO7CUI.js";
export {
  CloseReason,
  ConnectionError,
  ErrorCode,
  JoinRefusedError,
  LeaveReason,
  RESUMED_ELSEWHERE,
  RelayClient,
  WELCOME_ENTRY_BYTES,
  connect,
  fromBase64Url,
  relayUrl,
  toBase64Url
};
