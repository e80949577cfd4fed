-- A minimal JSON encoder for the bench's report: strings, numbers, booleans and tables (arrays or objects).
local json = {}

local function encode_string(s)
  return '"' .. s:gsub('[%c"\\\128-\255]', function(c)
    return string.format("\\u%04x", c:byte())
  end) .. '"'
end

function json.encode(value)
  local kind = type(value)
  if kind == "string" then
    return encode_string(value)
  elseif kind == "number" then
    return string.format("%.17g", value)
  elseif kind == "boolean" then
    return tostring(value)
  elseif kind == "table" then
    local parts = {}
    if #value > 0 then
      for _, item in ipairs(value) do table.insert(parts, json.encode(item)) end
      return "[" .. table.concat(parts, ",") .. "]"
    end
    for key, item in pairs(value) do
      table.insert(parts, encode_string(tostring(key)) .. ":" .. json.encode(item))
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return "null"
end

return json
