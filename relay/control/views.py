"""Records rendered as GS2's JSON (camelCase names, GRNs, address fields empty until ready)."""

from __future__ import annotations

from typing import Any

from relay.control.records import NamespaceRecord, RoomRecord


def namespace_grn(region: str, owner: str, namespace: str) -> str:
    return f"grn:gs2:{region}:{owner}:realtime:{namespace}"


def room_grn(region: str, owner: str, namespace: str, room: str) -> str:
    return f"{namespace_grn(region, owner, namespace)}:room:{room}"


def namespace_json(rec: NamespaceRecord, region: str, owner: str) -> dict[str, Any]:
    return {
        "namespaceId": namespace_grn(region, owner, rec.name),
        "name": rec.name,
        "description": rec.description,
        "transactionSetting": rec.transaction_setting,
        "transactionSettingV2": rec.transaction_setting_v2,
        "serverType": rec.server_type,
        "serverSpec": rec.server_spec,
        "createNotification": rec.create_notification,
        "logSetting": rec.log_setting,
        "createdAt": rec.created_at,
        "updatedAt": rec.updated_at,
        "revision": rec.revision,
    }


def room_json(rec: RoomRecord, region: str, owner: str) -> dict[str, Any]:
    ready = rec.ready
    return {
        "roomId": room_grn(region, owner, rec.namespace, rec.name),
        "name": rec.name,
        "ipAddress": rec.ip_address if ready else None,
        "port": rec.port if ready else None,
        "encryptionKey": rec.encryption_key if ready else None,
        "notificationUserIds": list(rec.notification_user_ids),
        "createdAt": rec.created_at,
        "updatedAt": rec.updated_at,
        "revision": rec.revision,
    }
