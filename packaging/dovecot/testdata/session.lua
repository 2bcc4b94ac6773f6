-- Runs hooks of mailauthd.lua one after another in ONE Lua state, as a
-- Dovecot auth-worker does, so the kept connection carries over from one
-- call to the next (for mailauthd_lua_test.go). Reads one call per line on
-- stdin, tab-separated:
--
--   HOOK USER PASSWORD
--
-- and prints, per call, "result <number>" and "string <text>" or "table
-- <n fields>", then "done". The line "deinit" calls script_deinit.
--
--   lua5.4 session.lua SCRIPT
dovecot = {auth = {PASSDB_RESULT_INTERNAL_FAILURE = -1, PASSDB_RESULT_SCHEME_NOT_AVAILABLE = -2,
  PASSDB_RESULT_USER_UNKNOWN = -3, PASSDB_RESULT_PASSWORD_MISMATCH = 0, PASSDB_RESULT_OK = 1,
  USERDB_RESULT_INTERNAL_FAILURE = -1, USERDB_RESULT_USER_UNKNOWN = -2, USERDB_RESULT_OK = 1}}
dofile(arg[1])
assert(script_init(nil) == 0)
io.stdout:setvbuf("line")
for line in io.lines() do
  if line == "deinit" then
    script_deinit()
    print("done")
  else
    local hook, user, password = line:match("^([^\t]*)\t([^\t]*)\t([^\t]*)$")
    local req = {user = user, service = "imap", remote_ip = "192.0.2.7"}
    function req:log_info(msg)
      io.stderr:write("log " .. msg .. "\n")
    end
    function req:log_debug(msg)
      io.stderr:write("debug " .. msg .. "\n")
    end
    local code, value
    if hook == "auth_password_verify" then
      code, value = auth_password_verify(req, password)
    else
      code, value = _G[hook](req)
    end
    print("result " .. tostring(code))
    if type(value) == "table" then
      print("table user=" .. tostring(value.user))
    else
      print(type(value) .. " " .. tostring(value))
    end
    print("done")
  end
  collectgarbage("collect")
end
