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
--   request: "MAC2" op user password service realm client-addr
--   reply:   "MAC2" outcome cause reason dn n-fields {key value}
--
-- every item a counted string: 2-byte big-endian length, then the bytes
-- (string.pack(">s2", s)). One request per connection.
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

local MAGIC = "MAC2"
local MAX_REPLY = 65536 -- control.MaxReplySize
local MAX_FIELDS = 128 -- control.MaxFields
local MAX_COUNTED = 65535

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

-- M.encode_request builds one request; nil and an error when a field does
-- not fit a counted string.
function M.encode_request(op, user, password, service, realm, client)
  local parts = {}
  for i, s in ipairs({MAGIC, op, user, password, service, realm, client}) do
    if #s > MAX_COUNTED then
      return nil, "request field " .. i .. " too long"
    end
    parts[i] = string.pack(">s2", s)
  end
  return table.concat(parts)
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

-- M.decode_reply reads a reply through recv(n), which returns exactly n
-- bytes or nil and an error. It returns the reply as a table {outcome,
-- cause, reason, dn, fields = {{key, value}, ...}} or nil and an error.
function M.decode_reply(recv)
  local total = 0
  local function counted()
    local hdr, err = recv(2)
    if hdr == nil then
      return nil, err
    end
    local n = string.unpack(">I2", hdr)
    total = total + 2 + n
    if total > MAX_REPLY then
      return nil, "reply longer than " .. MAX_REPLY .. " bytes"
    end
    if n == 0 then
      return ""
    end
    return recv(n)
  end
  local head = {}
  for i = 1, 6 do
    local s, err = counted()
    if s == nil then
      return nil, "reading reply: " .. tostring(err)
    end
    if i == 1 and s ~= MAGIC then
      return nil, "not a mailauthd control reply (bad magic)"
    end
    head[i] = s
  end
  local r = {outcome = head[2], cause = head[3], reason = head[4], dn = head[5], fields = {}}
  if r.outcome ~= "accept" and r.outcome ~= "reject" and r.outcome ~= "tempfail" then
    return nil, "unknown outcome " .. string.format("%q", r.outcome)
  end
  local n = head[6]:match("^%d+$") and tonumber(head[6])
  if n == nil or n > MAX_FIELDS or tostring(n) ~= head[6] then
    return nil, "bad field count " .. string.format("%q", head[6])
  end
  for i = 1, n do
    local k, err = counted()
    if k == nil then
      return nil, "reading field: " .. tostring(err)
    end
    local v
    v, err = counted()
    if v == nil then
      return nil, "reading field: " .. tostring(err)
    end
    r.fields[i] = {k, v}
  end
  return r
end

-- M.string_reader returns a recv(n) for M.decode_reply over a string.
function M.string_reader(buf)
  local pos = 1
  return function(n)
    if pos + n - 1 > #buf then
      return nil, "reply cut short"
    end
    local s = buf:sub(pos, pos + n - 1)
    pos = pos + n
    return s
  end
end

-- socket.core, not socket: the C functions only, so the heap Dovecot's
-- full garbage collection walks after every call stays small.
local now = require("socket.core").gettime

local function new_unix_socket()
  local unix = require("socket.unix")
  if type(unix) == "table" and unix.stream ~= nil then
    return unix.stream()
  end
  return unix()
end

-- M.exchange sends one request to the daemon and reads its reply, within
-- `timeout` seconds in all. nil and an error on any failure.
function M.exchange(request)
  local deadline = now() + timeout
  local c, err = new_unix_socket()
  if c == nil then
    return nil, "socket: " .. tostring(err)
  end
  local function left()
    local l = deadline - now()
    if l <= 0 then
      return nil
    end
    c:settimeout(l)
    return l
  end
  local function fail(what, e)
    c:close()
    return nil, what .. ": " .. tostring(e)
  end
  left()
  local ok
  ok, err = c:connect(socket_path)
  if not ok then
    return fail("connect " .. socket_path, err)
  end
  local sent = 0
  while sent < #request do
    if not left() then
      return fail("send", "timeout")
    end
    local n, serr, partial = c:send(request, sent + 1)
    if n == nil then
      return fail("send", serr)
    end
    sent = n
  end
  -- The daemon closes the connection after its reply: one receive takes it
  -- all (luasocket returns what it read, as "partial", once the peer
  -- closes), bounded by the reply limit and the time left.
  if not left() then
    return fail("receive", "timeout")
  end
  local data, rerr, partial = c:receive(MAX_REPLY + 1)
  c:close()
  if data ~= nil then
    return nil, "reply longer than " .. MAX_REPLY .. " bytes"
  elseif rerr ~= "closed" then
    return nil, "receive: " .. tostring(rerr)
  end
  local reply, derr = M.decode_reply(M.string_reader(partial))
  if reply == nil then
    return nil, derr
  end
  return reply
end

-- M.ask asks the daemon about req: op "auth" with the password, "lookup"
-- without.
function M.ask(op, req, password)
  local user, realm = M.split_realm(req.user or "")
  -- 2.4 renamed the request's service to protocol (%{protocol}).
  local service = req.protocol or req.service or ""
  local msg, err = M.encode_request(op, user, password or "", service, realm, req.remote_ip or "")
  if msg == nil then
    -- Longer than any counted string: no login can be that long, so a
    -- refusal (the daemon refuses fields over server.max_field_size too).
    return {outcome = "reject", cause = "invalid", reason = err, dn = "", fields = {}}
  end
  return M.exchange(msg)
end

-- M.fields turns the daemon's fields into Dovecot's table. For a userdb,
-- Dovecot wants userdb fields without the prefix (db-lua.c hands a userdb
-- lookup's keys to auth_request_set_userdb_field as they are): userdb_home
-- becomes home, "user" stays (it names the user in both), and the passdb's
-- own fields (proxy, host, ...) are left out, as Dovecot's checkpassword and
-- prefetch userdbs do.
function M.fields(list, userdb)
  local t = {}
  for _, kv in ipairs(list) do
    local k, v = kv[1], kv[2]
    if not userdb then
      t[k] = v
    elseif k == "user" then
      t[k] = v
    elseif k:sub(1, 7) == "userdb_" and #k > 7 then
      t[k:sub(8)] = v
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
