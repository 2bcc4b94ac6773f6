-- mailauthd.lua: Dovecot passdb and userdb that ask the running mailauthd
-- daemon, over its control socket, for the same decision the saslauthd
-- socket gives Postfix. For Dovecot 2.3 (driver = lua) and 2.4 (passdb lua
-- { lua_file = ... }); Lua 5.4 and luasocket (Debian: dovecot-auth-lua,
-- lua-socket). Configuration blocks and the upgrade from checkpassword:
-- /usr/share/doc/mailauthd/dovecot.md (docs/dovecot.md in the source).
--
-- The socket path: this line, or the environment variable MAILAUTHD_SOCKET
-- (2.3: import_environment), or lua_settings { socket = ... } (2.4), the
-- later winning. The same for the timeout (MAILAUTHD_TIMEOUT, timeout = ).
local socket_path = "/run/mailauthd/control"
local timeout = 5 -- seconds for the whole exchange: connect, send, receive

-- The script is protocol only: the daemon decides (LDAP, host and service
-- rules, cache) and maps the entry to Dovecot's fields (dovecot.fields and
-- dovecot.defaults in mailauthd.yaml), so checkpassword and Lua can never
-- map one entry differently. The wire format is package control's:
--
--   request: "MACK" op user password service realm client-addr
--   reply:   "MAC2" outcome cause reason dn n-fields {key value}
--
-- every item a counted string: 2-byte big-endian length, then the bytes
-- (string.pack(">s2", s)). "MACK" asks the daemon to keep the connection
-- open: Dovecot runs this script in its auth-workers one call at a time per
-- process, so each Lua state keeps one connection and sends every request
-- on it. When the daemon closed it (idle timeout, its per-connection limit,
-- a restart) before any byte of the reply came, the request is sent once
-- more on a new connection; never after part of a reply. A daemon older
-- than keep-alive closes a new connection at "MACK": the script then asks
-- with "MAC2", one request per connection, for a minute.
--
-- What Dovecot is told (FINDINGS.md of internal/dovecottest: both 2.3 and
-- 2.4.1 accept a table on success and a string on every failure, nothing
-- else, and 2.3 turns a false boolean into a set flag, so none is sent):
--
--   daemon says                   auth_password_verify  passdb lookup   userdb lookup
--   accept                        OK, fields            OK, fields +    OK, userdb fields
--                                                       nopassword
--   reject wrong_password         PASSWORD_MISMATCH     USER_UNKNOWN    USER_UNKNOWN
--   reject unknown_user           USER_UNKNOWN          USER_UNKNOWN    USER_UNKNOWN
--   reject (policy, account, ...) PASSWORD_MISMATCH     USER_UNKNOWN    USER_UNKNOWN
--   tempfail, no daemon, timeout,
--   broken reply                  INTERNAL_FAILURE      INTERNAL_FAILURE INTERNAL_FAILURE
--
-- A refusal's reason goes to Dovecot's log (info), never to the client.

local M = {} -- the protocol code, for tests (see mailauthd_lua_test.go)

local MAGIC = "MAC2" -- replies; a request after which the daemon closes
local MAGIC_KEEP = "MACK" -- a request after which the daemon keeps the connection
local MAX_REPLY = 65536 -- control.MaxReplySize
local MAX_FIELDS = 128 -- control.MaxFields
local MAX_COUNTED = 65535
local ONE_SHOT_SECONDS = 60 -- one request per connection after a daemon refused "MACK"

local PACKED_MAGIC = string.pack(">s2", MAGIC)
local PACKED_MAGIC_KEEP = string.pack(">s2", MAGIC_KEEP)

local function setting(value, env)
  local v = os.getenv(env)
  if v ~= nil and v ~= "" then
    return v
  end
  return value
end

socket_path = setting(socket_path, "MAILAUTHD_SOCKET")
timeout = tonumber(setting(timeout, "MAILAUTHD_TIMEOUT")) or timeout

-- M.configure applies 2.4's lua_settings { socket = ..., timeout = ... }.
function M.configure(args)
  if type(args) ~= "table" then
    return
  end
  if type(args.socket) == "string" and args.socket ~= "" then
    socket_path = args.socket
  end
  local t = tonumber(args.timeout)
  if t ~= nil and t > 0 then
    timeout = t
  end
end

function M.settings()
  return socket_path, timeout
end

-- M.encode_request builds a request without its magic (M.exchange adds
-- it); nil and an error when a field does not fit a counted string.
function M.encode_request(op, user, password, service, realm, client)
  if #user > MAX_COUNTED or #password > MAX_COUNTED or #service > MAX_COUNTED
      or #realm > MAX_COUNTED or #client > MAX_COUNTED then
    return nil, "request field too long"
  end
  return string.pack(">s2s2s2s2s2s2", op, user, password, service, realm, client)
end

-- M.split_realm is libsasl2's rule, as the other front doors apply it
-- (auth.Request.SplitRealm): "name@domain" is user "name", realm "domain".
function M.split_realm(user)
  local at = user:match("^.*()@")
  if at ~= nil and at > 1 and at < #user then
    return user:sub(1, at - 1), user:sub(at + 1)
  end
  return user, ""
end

local unpack, sub = string.unpack, string.sub

-- item reads the counted string at pos: the string and the position after
-- it; nil when buf ends first; nil and an error when it would pass the
-- reply limit.
local function item(buf, pos, len)
  if pos + 1 > len then
    return nil
  end
  local last = pos + 1 + unpack(">I2", buf, pos)
  if last > MAX_REPLY then
    return nil, "reply longer than " .. MAX_REPLY .. " bytes"
  end
  if last > len then
    return nil
  end
  return sub(buf, pos + 2, last), last + 1
end

-- M.decode_reply parses the reply at the start of buf. It returns the
-- reply as a table {outcome, cause, reason, dn, fields = {key1, value1,
-- key2, value2, ...}} and the number of bytes it took; nil and nil when buf
-- holds only the start of a reply; nil and an error when it is no reply.
function M.decode_reply(buf)
  local len, pos = #buf, 1
  local head = {}
  for i = 1, 6 do
    local s, next_pos = item(buf, pos, len)
    if s == nil then
      return nil, next_pos
    end
    if i == 1 and s ~= MAGIC then
      return nil, "not a mailauthd control reply (bad magic)"
    end
    head[i], pos = s, next_pos
  end
  local outcome = head[2]
  if outcome ~= "accept" and outcome ~= "reject" and outcome ~= "tempfail" then
    return nil, "unknown outcome " .. string.format("%q", outcome)
  end
  local count = head[6]
  local n = count:match("^%d+$") and tonumber(count)
  if n == nil or n > MAX_FIELDS or tostring(n) ~= count then
    return nil, "bad field count " .. string.format("%q", count)
  end
  local fields = {}
  for i = 1, 2 * n do
    local s, next_pos = item(buf, pos, len)
    if s == nil then
      return nil, next_pos
    end
    fields[i], pos = s, next_pos
  end
  return {outcome = outcome, cause = head[3], reason = head[4], dn = head[5], fields = fields}, pos - 1
end

-- socket.core, not socket: the C functions only, so the heap Dovecot's
-- full garbage collection walks after every call stays small. socket.unix
-- is loaded at the first connect.
local now = require("socket.core").gettime
local new_unix_socket

-- The connection kept between calls (a Lua state runs one call at a time),
-- and until when to ask with one request per connection.
local kept = nil
local one_shot_until = 0

local function connect(deadline)
  if new_unix_socket == nil then
    local unix = require("socket.unix")
    if type(unix) == "table" and unix.stream ~= nil then
      new_unix_socket = unix.stream
    else
      new_unix_socket = unix
    end
  end
  local c, err = new_unix_socket()
  if c == nil then
    return nil, "socket: " .. tostring(err)
  end
  local left = deadline - now()
  if left <= 0 then
    c:close()
    return nil, "connect " .. socket_path .. ": timeout"
  end
  c:settimeout(left)
  local ok
  ok, err = c:connect(socket_path)
  if not ok then
    c:close()
    return nil, "connect " .. socket_path .. ": " .. tostring(err)
  end
  return c
end

-- roundtrip sends request on c and reads one reply, before deadline. It
-- returns the reply, or nil, an error, whether any byte of a reply arrived
-- and whether the time ran out.
local function roundtrip(c, request, deadline)
  local left = deadline - now()
  if left <= 0 then
    return nil, "send: timeout", false, true
  end
  c:settimeout(left)
  local n, err = c:send(request)
  if n == nil then
    return nil, "send: " .. tostring(err), false, err == "timeout"
  end
  local buf = ""
  while true do
    -- Wait for a byte, then take whatever else is there without waiting
    -- (the daemon writes a reply at once): a reply costs one wait however
    -- many fields it has.
    left = deadline - now()
    if left <= 0 then
      return nil, "receive: timeout", buf ~= "", true
    end
    c:settimeout(left)
    local first, rerr = c:receive(1)
    if first == nil then
      return nil, "receive: " .. tostring(rerr), buf ~= "", rerr == "timeout"
    end
    c:settimeout(0)
    local all, _, rest = c:receive(MAX_REPLY - #buf)
    buf = buf .. first .. (all or rest)
    local reply, used = M.decode_reply(buf)
    if reply ~= nil then
      if used ~= #buf or c:dirty() then
        -- More than one reply: never read it as the next request's answer.
        return nil, "bytes after the reply", true, false
      end
      return reply
    elseif used ~= nil then
      return nil, used, true, false
    elseif #buf >= MAX_REPLY then
      return nil, "reply longer than " .. MAX_REPLY .. " bytes", true, false
    end
  end
end

-- M.exchange sends one request (M.encode_request) to the daemon and reads
-- its reply, within `timeout` seconds in all. It returns the reply, or nil
-- and an error; and, when it had to ask again on a new connection, a note
-- saying why, for the log. A connection is kept only after a whole, clean
-- reply, so a late or extra answer can never be taken for another
-- request's. At most three tries: the kept connection, a new one, and a new
-- one without keep-alive.
function M.exchange(body)
  local t = now()
  local deadline = t + timeout
  local keep = t >= one_shot_until
  local c, reused = kept, kept ~= nil
  kept = nil
  local note
  while true do
    if c == nil then
      local err
      c, err = connect(deadline)
      if c == nil then
        return nil, err, note
      end
    end
    local reply, err, got, timed_out = roundtrip(c, (keep and PACKED_MAGIC_KEEP or PACKED_MAGIC) .. body, deadline)
    if reply ~= nil then
      if keep then
        kept = c
      else
        c:close()
      end
      return reply, nil, note
    end
    c:close()
    c = nil
    if got or timed_out then
      return nil, err, note
    end
    -- Closed before any byte of a reply.
    if reused then
      -- The daemon closed the kept connection (idle, its limit, a
      -- restart): once more on a new one.
      reused = false
      note = "the kept connection was closed (" .. err .. "); asked again on a new one"
    elseif keep then
      -- A new connection closed at once: a daemon that predates
      -- keep-alive refuses "MACK" so. Ask it one request per connection.
      keep = false
      one_shot_until = now() + ONE_SHOT_SECONDS
      note = "the daemon closed a new connection at once (" .. err .. "); one request per connection for "
        .. ONE_SHOT_SECONDS .. " s"
    else
      return nil, err, note
    end
  end
end

-- M.close drops the kept connection (script_deinit).
function M.close()
  if kept ~= nil then
    kept:close()
    kept = nil
  end
end

-- The request's service: 2.4 renamed it to protocol (%{protocol}). Each
-- field read from Dovecot's request builds its variable table, so the name
-- that answered is remembered.
local service_key = nil

local function service_of(req)
  if service_key ~= nil then
    return req[service_key] or ""
  end
  local s = req.protocol
  if s ~= nil then
    service_key = "protocol"
    return s
  end
  s = req.service
  if s ~= nil then
    service_key = "service"
    return s
  end
  return ""
end

-- M.ask asks the daemon about req: op "auth" with the password, "lookup"
-- without.
function M.ask(op, req, password)
  local user, realm = M.split_realm(req.user or "")
  local msg, err = M.encode_request(op, user, password or "", service_of(req), realm, req.remote_ip or "")
  if msg == nil then
    -- Longer than any counted string: no login can be that long, so a
    -- refusal (the daemon refuses fields over server.max_field_size too).
    return {outcome = "reject", cause = "invalid", reason = err, dn = "", fields = {}}
  end
  local reply, note
  reply, err, note = M.exchange(msg)
  if note ~= nil and type(req) == "table" and req.log_debug ~= nil then
    req:log_debug("mailauthd: " .. note)
  end
  return reply, err
end

-- M.fields turns the daemon's fields into Dovecot's table. For a userdb,
-- Dovecot wants userdb fields without the prefix (db-lua.c hands a userdb
-- lookup's keys to auth_request_set_userdb_field as they are): userdb_home
-- becomes home, "user" stays (it names the user in both), and the passdb's
-- own fields (proxy, host, ...) are left out, as Dovecot's checkpassword and
-- prefetch userdbs do.
function M.fields(list, userdb)
  local t = {}
  for i = 1, #list, 2 do
    local k, v = list[i], list[i + 1]
    if not userdb then
      t[k] = v
    elseif k == "user" then
      t[k] = v
    elseif #k > 7 and sub(k, 1, 7) == "userdb_" then
      t[sub(k, 8)] = v
    end
  end
  return t
end

local function log_info(req, msg)
  if type(req) == "table" and req.log_info ~= nil then
    req:log_info(msg)
  end
end

-- M.result maps a reply (or nil and an error) to Dovecot's result. kind is
-- "passdb" (auth_password_verify), "lookup" (auth_passdb_lookup) or
-- "userdb" (auth_userdb_lookup).
function M.result(kind, req, reply, err)
  local auth = dovecot.auth
  local userdb = kind == "userdb"
  local INTERNAL = userdb and auth.USERDB_RESULT_INTERNAL_FAILURE or auth.PASSDB_RESULT_INTERNAL_FAILURE
  local UNKNOWN = userdb and auth.USERDB_RESULT_USER_UNKNOWN or auth.PASSDB_RESULT_USER_UNKNOWN
  if reply == nil then
    return INTERNAL, "mailauthd: " .. tostring(err)
  end
  if reply.outcome == "accept" then
    local fields = M.fields(reply.fields, userdb)
    if kind == "lookup" then
      -- A passdb lookup with no password in the reply fails ("No password
      -- returned") unless nopassword is set. Dovecot lets a NULL password
      -- through only where nothing is verified (doveadm auth lookup, an
      -- LMTP proxy lookup); a mechanism that needs a password hash
      -- (CRAM-MD5, SCRAM) gets SCHEME_NOT_AVAILABLE (passdb.c,
      -- passdb_handle_credentials); auth_passdb_lookup refuses those
      -- itself first.
      fields.nopassword = "y"
    end
    return userdb and auth.USERDB_RESULT_OK or auth.PASSDB_RESULT_OK, fields
  elseif reply.outcome == "reject" then
    if reply.cause == "unknown_user" then
      return UNKNOWN, "unknown user"
    end
    if reply.cause ~= "wrong_password" then
      log_info(req, "mailauthd: refused (" .. reply.cause .. "): " .. reply.reason)
    end
    if kind == "passdb" then
      return auth.PASSDB_RESULT_PASSWORD_MISMATCH, "refused"
    end
    return UNKNOWN, "refused"
  end
  return INTERNAL, "mailauthd: temporary failure: " .. reply.reason
end

-- Dovecot's entry points.

function script_init(args)
  M.configure(args) -- 2.4: lua_settings; 2.3: nothing
  return 0
end

function script_deinit()
  M.close()
end

function auth_password_verify(req, password)
  local reply, err = M.ask("auth", req, password)
  return M.result("passdb", req, reply, err)
end

function auth_passdb_lookup(req)
  if req.mechanism ~= nil and req.mechanism ~= "" and not req.skip_password_check then
    -- A login with a mechanism that needs the password hash (CRAM-MD5,
    -- DIGEST-MD5, SCRAM): mailauthd verifies passwords by LDAP bind and
    -- has none. Offer only PLAIN and LOGIN (auth_mechanisms).
    log_info(req, "mailauthd: mechanism " .. req.mechanism .. " needs a password hash; offer only plain and login")
    return dovecot.auth.PASSDB_RESULT_SCHEME_NOT_AVAILABLE, "no password hash"
  end
  local reply, err = M.ask("lookup", req)
  return M.result("lookup", req, reply, err)
end

function auth_userdb_lookup(req)
  local reply, err = M.ask("lookup", req)
  return M.result("userdb", req, reply, err)
end

return M
