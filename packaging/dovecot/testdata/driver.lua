-- Runs one hook of mailauthd.lua under plain lua5.4, with a stub of the
-- `dovecot` table Dovecot's auth process provides, and prints what Dovecot
-- would get back (for mailauthd_lua_test.go).
--
--   lua5.4 driver.lua SCRIPT HOOK USER PASSWORD SERVICE REMOTE_IP [MECHANISM]
--
-- HOOK is auth_password_verify, auth_passdb_lookup or auth_userdb_lookup.
-- DRIVER_SETTINGS_SOCKET, if set, is passed to script_init as 2.4's
-- lua_settings { socket = ... }. Output, one item a line:
--   result <number>
--   table <key>=<value>   (sorted; one line per field)  or  string <text>  or  nil
--   log <message>         (req:log_info calls, on stderr)
dovecot = {
  auth = {
    PASSDB_RESULT_INTERNAL_FAILURE = -1,
    PASSDB_RESULT_SCHEME_NOT_AVAILABLE = -2,
    PASSDB_RESULT_USER_UNKNOWN = -3,
    PASSDB_RESULT_USER_DISABLED = -4,
    PASSDB_RESULT_PASS_EXPIRED = -5,
    PASSDB_RESULT_NEXT = -6,
    PASSDB_RESULT_PASSWORD_MISMATCH = 0,
    PASSDB_RESULT_OK = 1,
    USERDB_RESULT_INTERNAL_FAILURE = -1,
    USERDB_RESULT_USER_UNKNOWN = -2,
    USERDB_RESULT_OK = 1,
  },
}

local script, hook, user, password, service, rip, mech = table.unpack(arg, 1, 7)
dofile(script)

local settings = nil
if os.getenv("DRIVER_SETTINGS_SOCKET") then
  settings = {socket = os.getenv("DRIVER_SETTINGS_SOCKET")}
end
assert(script_init(settings) == 0)

local req = {user = user, service = service, remote_ip = rip, mechanism = mech}
function req:log_info(msg)
  io.stderr:write("log " .. msg .. "\n")
end

local code, value
if hook == "auth_password_verify" then
  code, value = auth_password_verify(req, password)
else
  code, value = _G[hook](req)
end
print("result " .. tostring(code))
if type(value) == "table" then
  local keys = {}
  for k, v in pairs(value) do
    assert(type(k) == "string" and type(v) == "string", "fields must be strings")
    keys[#keys + 1] = k
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    print("table " .. k .. "=" .. value[k])
  end
elseif type(value) == "string" then
  print("string " .. value)
else
  print(type(value))
end
