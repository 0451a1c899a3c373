-- Record transform for kafka_to_s3: replace e-mail addresses in app events before they reach S3,
-- so the lake and the warehouse never hold them. Called once per JSON record; returns the record
-- (one), nil (drop it) or a list (many).
local EMAIL = "[%w%._%+%-]+@[%w%.%-]+%.%a%a+"

local function scrub(value)
  if type(value) == "string" then
    return (value:gsub(EMAIL, "<email>"))
  elseif type(value) == "table" then
    for k, v in pairs(value) do
      value[k] = scrub(v)
    end
  end
  return value
end

function transform(record)
  if record.type == "internal_test" then
    return nil
  end
  record.properties = scrub(record.properties)
  return record
end
