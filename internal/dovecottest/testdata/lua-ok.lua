-- A minimal Lua passdb and userdb for internal/dovecottest's own tests. One
-- file for Dovecot 2.3 and 2.4: what each version accepts is in FINDINGS.md.
--
--   lua-ok / pw          accepted, fields proxy=y host=192.0.2.1 (and
--                        greeting=<lua_settings greeting> on 2.4)
--   lua-ok / other       password mismatch (second value a string)
--   lua-tempfail         internal failure
--   lua-mismatch-table   password mismatch with a table as second value
--                        (2.3: a failure; 2.4.1: an internal failure)
--   lua-ok-string        success with a string of fields
--                        (2.3: fields parsed; 2.4.1: an internal failure)
--   lua-ok-nil           success with nothing else
--                        (2.3: an internal failure; 2.4.1: success)
--   lua-mismatch-nil     password mismatch with nothing else
--                        (2.3: an internal failure; 2.4.1: a failure)
--   lua-ok-types         success with a number and a boolean field
--   anyone else          user unknown

local settings = {}

-- 2.4 passes the passdb's or userdb's lua_settings { } block as a table of
-- strings; 2.3 passes nothing. 0 means ready.
function script_init(args)
  if type(args) == "table" then
    settings = args
  end
  return 0
end

function script_deinit()
end

function auth_password_verify(req, password)
  local auth = dovecot.auth
  if req.user == "lua-ok" and password == "pw" then
    local fields = {proxy = "y", host = "192.0.2.1"}
    if settings.greeting then
      fields.greeting = settings.greeting
    end
    return auth.PASSDB_RESULT_OK, fields
  elseif req.user == "lua-ok" then
    return auth.PASSDB_RESULT_PASSWORD_MISMATCH, "wrong password"
  elseif req.user == "lua-tempfail" then
    return auth.PASSDB_RESULT_INTERNAL_FAILURE, "backend down"
  elseif req.user == "lua-mismatch-table" then
    return auth.PASSDB_RESULT_PASSWORD_MISMATCH, {}
  elseif req.user == "lua-ok-string" then
    return auth.PASSDB_RESULT_OK, "proxy=y host=192.0.2.1"
  elseif req.user == "lua-ok-nil" then
    return auth.PASSDB_RESULT_OK
  elseif req.user == "lua-mismatch-nil" then
    return auth.PASSDB_RESULT_PASSWORD_MISMATCH
  elseif req.user == "lua-ok-types" then
    return auth.PASSDB_RESULT_OK, {port = 143, nologin = false, proxy = true}
  end
  return auth.PASSDB_RESULT_USER_UNKNOWN, "no such user"
end

function auth_passdb_lookup(req)
  local auth = dovecot.auth
  if req.user == "lua-ok" then
    return auth.PASSDB_RESULT_OK, {proxy = "y", host = "192.0.2.1", nopassword = "y"}
  elseif req.user == "lua-tempfail" then
    return auth.PASSDB_RESULT_INTERNAL_FAILURE, "backend down"
  end
  return auth.PASSDB_RESULT_USER_UNKNOWN, "no such user"
end

function auth_userdb_lookup(req)
  local auth = dovecot.auth
  if req.user == "lua-ok" then
    return auth.USERDB_RESULT_OK, {uid = 5000, gid = 5000, home = "/var/vmail/lua-ok"}
  elseif req.user == "lua-tempfail" then
    return auth.USERDB_RESULT_INTERNAL_FAILURE, "backend down"
  end
  return auth.USERDB_RESULT_USER_UNKNOWN, "no such user"
end
