-- A Lua passdb that asks a Unix socket, with luasocket's socket.unix (Debian
-- package lua-socket), the way a Lua passdb reaching mailauthd would.
-- Sends "USER\n"; the reply line "OK" accepts, anything else refuses.
-- The socket's path comes from lua_settings { socket = ... } on 2.4; on 2.3
-- (no settings) the test writes it into this file in place of @SOCKET@.
local unix = require("socket.unix")

local path = "@SOCKET@"

function script_init(args)
  if type(args) == "table" and args.socket then
    path = args.socket
  end
  return 0
end

function auth_password_verify(req, password)
  local auth = dovecot.auth
  local c = unix()
  local ok, err = c:connect(path)
  if not ok then
    c:close()
    return auth.PASSDB_RESULT_INTERNAL_FAILURE, "connect " .. path .. ": " .. tostring(err)
  end
  c:settimeout(5)
  c:send(req.user .. "\n")
  local line, rerr = c:receive("*l")
  c:close()
  if line == nil then
    return auth.PASSDB_RESULT_INTERNAL_FAILURE, "receive: " .. tostring(rerr)
  elseif line == "OK" then
    return auth.PASSDB_RESULT_OK, {via = "socket"}
  end
  return auth.PASSDB_RESULT_PASSWORD_MISMATCH, "refused"
end
