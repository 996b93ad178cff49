"""`PUT/GET/DELETE /api/v1/auth/cookies`: the owner's cookie file for yt-dlp.

For sites that need a login (YouTube's bot check, members-only media). It is
stored only in the owner's own bucket (`files-<owner>`, object
`auth/cookies.txt`), which only the owner's jobs and nodes read, and it lives
as long as that bucket's TTL (GPUBUS_FILES_TTL_DAYS). Its content is never
logged or returned: GET tells whether one is there, not what it says.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request

from bus import objects
from gateway.bodies import read_capped
from gateway.deps import State, User
from schemas import names
from schemas.cookies import MAX_COOKIE_FILE_BYTES, normalize
from schemas.errors import NotFound

log = logging.getLogger("gpubus.gateway.cookies")

router = APIRouter(prefix="/api/v1/auth/cookies", tags=["auth"])


@router.put("")
async def put_cookies(request: Request, st: State, principal: User) -> dict[str, Any]:
    """The raw Netscape cookie file as the request body."""
    owner = principal.user_id
    data, count = normalize(await read_capped(request, MAX_COOKIE_FILE_BYTES, "the cookie file"))
    await st.ensure_owner(owner)
    await objects.put_bytes(st.js, names.files_bucket(owner), names.COOKIES_OBJECT, data)
    log.info("cookie file stored for owner=%s (%d cookies, %d bytes)", owner, count, len(data))
    return {"stored": True, "cookies": count, "size": len(data)}


@router.get("")
async def get_cookies(st: State, principal: User) -> dict[str, Any]:
    await st.ensure_owner(principal.user_id)
    try:
        info = await objects.object_info(st.js, names.files_bucket(principal.user_id), names.COOKIES_OBJECT)
    except NotFound:
        return {"present": False}
    return {"present": True, "size": info.size, "uploaded_at": info.mtime}


@router.delete("")
async def delete_cookies(st: State, principal: User) -> dict[str, Any]:
    await st.ensure_owner(principal.user_id)
    await objects.delete_object(st.js, names.files_bucket(principal.user_id), names.COOKIES_OBJECT)
    log.info("cookie file deleted for owner=%s", principal.user_id)
    return {"present": False}
