"""GS2-Realtime's client wire: what GS2's Unity SDK (`RelayRealtimeSession`) speaks to a room.

One protobuf `Container` per WebSocket binary message, its payload signed with HMAC-SHA256 and
the room's key (nothing is encrypted); docs/gs2-clients.md says how the relay maps it onto a
room and every decision taken where GS2's own behaviour is unknown.

- `message.proto`, `relay.proto`: the schema (no package), written from the field tables of the
  research note; `message_pb2.py`, `relay_pb2.py`: what protoc made of them, checked in. After a
  change to a .proto, regenerate with grpcio-tools' bundled protoc (libprotoc 35.1, which writes
  code for protobuf runtime 7.35.1 and later; pyproject.toml's lower bound follows it), installed
  in a scratch virtual environment, not in the project's:

      python -m venv /tmp/protoc && /tmp/protoc/bin/pip install grpcio-tools==1.85.1
      cd relay/protocol/gs2 && /tmp/protoc/bin/python -m grpc_tools.protoc -I. --python_out=. \\
          message.proto relay.proto

  tests/protocol/test_gs2_wire.py checks the descriptors against the note's tables.
- `wire.py`: sans-I/O decoding of a client's Containers into the room's native messages, and
  encoding of the room's native messages into Containers for one recipient.
"""
